"""The engine's view of `{{ expr }}` expressions (API.md "Workflows", Expressions).

The scheduler depends only on the small `Expressions` protocol; `SharedExpressions` adapts
the shared `flowforge_common.expressions` module, which workflow_svc also uses when a
workflow is saved, so what validates is exactly what runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from flowforge_common.expressions import ExpressionError, compile_template, evaluate_condition

__all__ = ["ExpressionError", "Expressions", "SharedExpressions"]


class Expressions(Protocol):
    """Evaluates step inputs, `when`, `for_each` and output mappings; raises ExpressionError."""

    def render(self, template: Any, context: Mapping[str, Any]) -> Any:
        """`template` with every `{{ expr }}` string replaced by its value."""
        ...

    def condition(self, expression: str, context: Mapping[str, Any]) -> bool:
        """A `when` expression's truth value (JMESPath truthiness)."""
        ...

    def values(self, expression: str, context: Mapping[str, Any]) -> Any:
        """A `for_each` expression's value (the caller checks it is a list)."""
        ...


class SharedExpressions:
    """`Expressions` over flowforge_common.expressions (strings compile once, cached there)."""

    def render(self, template: Any, context: Mapping[str, Any]) -> Any:
        """See `Expressions.render`."""
        return compile_template(template).evaluate(context)

    def condition(self, expression: str, context: Mapping[str, Any]) -> bool:
        """See `Expressions.condition`."""
        return evaluate_condition(expression, context)

    def values(self, expression: str, context: Mapping[str, Any]) -> Any:
        """See `Expressions.values`."""
        return compile_template(expression).evaluate(context)
