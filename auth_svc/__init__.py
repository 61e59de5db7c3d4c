"""auth_svc: tenants, users, roles, password hashing, JWT signing and the JWKS."""
