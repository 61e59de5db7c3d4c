"""gRPC servicers of workflow_svc: proto <-> domain only. Authentication, scopes and the mapping
of domain errors to rich statuses happen in the shared interceptor."""

from __future__ import annotations

import grpc

from flowforge.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from flowforge.workflow.v1 import agent_service_pb2 as pb
from flowforge.workflow.v1 import agent_service_pb2_grpc, workflow_service_pb2, workflow_service_pb2_grpc
from flowforge_common.auth import current_principal
from flowforge_common.pagination import clamp_limit
from workflow_svc.api.mappers import (
    RenderedVersions,
    agent_filter_from_proto,
    agent_from_proto,
    agent_to_proto,
    audit_entry_to_proto,
    audit_query_from_proto,
    auth_config_from_proto,
    cursor_from_page_token,
    definition_from_proto,
    health_to_proto,
    page_token_from_cursor,
    page_token_from_template_name,
    page_token_from_version,
    page_token_from_workflow_cursor,
    parameters_from_proto,
    plan_to_proto,
    runtime_status_to_proto,
    step_type_to_proto,
    template_from_proto,
    template_name_from_page_token,
    template_to_proto,
    validation_errors_to_proto,
    version_from_page_token,
    workflow_cursor_from_page_token,
    workflow_filter_from_proto,
    workflow_status_from_proto,
    workflow_to_proto,
)
from workflow_svc.domain.audit import AuditLog
from workflow_svc.domain.health import AgentHealthMonitor
from workflow_svc.domain.service import AgentRegistry
from workflow_svc.domain.step_types import list_step_types
from workflow_svc.domain.workflows import WorkflowCatalog, parse_order_by

wf = workflow_service_pb2


class AgentServiceServicer(agent_service_pb2_grpc.AgentServiceServicer):
    """AgentService over the agent registry and the health monitor."""

    def __init__(self, registry: AgentRegistry, health: AgentHealthMonitor) -> None:
        self._registry = registry
        self._health = health

    async def CreateAgent(
        self, request: pb.CreateAgentRequest, _context: grpc.aio.ServicerContext
    ) -> pb.CreateAgentResponse:
        """Registers an agent in the caller's tenant."""
        agent = await self._registry.create_agent(
            current_principal(), agent_from_proto(request.agent), auth_config_from_proto(request.agent)
        )
        return pb.CreateAgentResponse(agent=agent_to_proto(agent))

    async def ListAgents(
        self, request: pb.ListAgentsRequest, _context: grpc.aio.ServicerContext
    ) -> pb.ListAgentsResponse:
        """One page of the caller's agents, newest first."""
        page = await self._registry.list_agents(
            current_principal(),
            agent_filter_from_proto(request),
            limit=clamp_limit(request.limit),
            after=cursor_from_page_token(request.page_token),
        )
        return pb.ListAgentsResponse(
            items=[agent_to_proto(agent) for agent in page.agents],
            next_page_token=page_token_from_cursor(page.next_cursor),
        )

    async def GetAgent(self, request: pb.GetAgentRequest, _context: grpc.aio.ServicerContext) -> pb.GetAgentResponse:
        """One agent of the caller's tenant."""
        agent = await self._registry.get_agent(current_principal(), request.id)
        return pb.GetAgentResponse(agent=agent_to_proto(agent))

    async def UpdateAgent(
        self, request: pb.UpdateAgentRequest, _context: grpc.aio.ServicerContext
    ) -> pb.UpdateAgentResponse:
        """Changes the fields named in `update_mask`."""
        agent = await self._registry.update_agent(
            current_principal(),
            request.id,
            agent_from_proto(request.agent),
            auth_config_from_proto(request.agent),
            list(request.update_mask.paths),
            etag=request.etag or None,
        )
        return pb.UpdateAgentResponse(agent=agent_to_proto(agent))

    async def DeleteAgent(
        self, request: pb.DeleteAgentRequest, _context: grpc.aio.ServicerContext
    ) -> pb.DeleteAgentResponse:
        """Soft-deletes an agent of the caller's tenant."""
        await self._registry.delete_agent(current_principal(), request.id)
        return pb.DeleteAgentResponse()

    async def CheckAgentHealth(
        self, request: pb.CheckAgentHealthRequest, _context: grpc.aio.ServicerContext
    ) -> pb.CheckAgentHealthResponse:
        """Probes the agent's health endpoint now; an agent that fails the probe is a successful
        RPC answering `unhealthy` with the reason in `detail`."""
        probe = await self._health.check_health(current_principal(), request.id)
        return pb.CheckAgentHealthResponse(health=health_to_proto(probe))

    async def ResolveAgent(
        self, request: pb.ResolveAgentRequest, _context: grpc.aio.ServicerContext
    ) -> pb.ResolveAgentResponse:
        """Internal: the active agent and its credential headers, for the execution engine."""
        agent, headers = await self._registry.resolve_agent(current_principal(), request.name)
        return pb.ResolveAgentResponse(agent=agent_to_proto(agent), credential_headers=headers)

    async def GetAgentStatus(
        self, request: pb.GetAgentStatusRequest, _context: grpc.aio.ServicerContext
    ) -> pb.GetAgentStatusResponse:
        """What workflow_svc knows: the agent's status, and the success rate and median latency
        of its recent health probes (0 before any probe). `in_flight` (0) and `circuit`
        (UNSPECIFIED) are the execution engine's to report and stay unset until it does."""
        status = await self._health.agent_status(current_principal(), request.id)
        return pb.GetAgentStatusResponse(status=runtime_status_to_proto(status))


class WorkflowServiceServicer(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """WorkflowService over the workflow catalog and the step-type registry."""

    def __init__(self, catalog: WorkflowCatalog) -> None:
        self._catalog = catalog
        self._rendered = RenderedVersions()

    async def CreateWorkflow(
        self, request: wf.CreateWorkflowRequest, _context: grpc.aio.ServicerContext
    ) -> wf.CreateWorkflowResponse:
        """Validates and saves a new workflow as version 1."""
        workflow = await self._catalog.create_workflow(
            current_principal(),
            definition_from_proto(request.workflow),
            status=workflow_status_from_proto(request.workflow.status),
        )
        return wf.CreateWorkflowResponse(workflow=workflow_to_proto(workflow))

    async def ValidateWorkflow(
        self, request: wf.ValidateWorkflowRequest, _context: grpc.aio.ServicerContext
    ) -> wf.ValidateWorkflowResponse:
        """Every problem of a definition and its plan; saves nothing."""
        report = await self._catalog.validate_workflow(current_principal(), definition_from_proto(request.workflow))
        return wf.ValidateWorkflowResponse(
            valid=report.valid, errors=validation_errors_to_proto(report.errors), plan=plan_to_proto(report.plan)
        )

    async def ListWorkflows(
        self, request: wf.ListWorkflowsRequest, _context: grpc.aio.ServicerContext
    ) -> wf.ListWorkflowsResponse:
        """One page of the caller's workflows at their latest version."""
        page = await self._catalog.list_workflows(
            current_principal(),
            workflow_filter_from_proto(request),
            order=parse_order_by(request.order_by),
            after=workflow_cursor_from_page_token(request.page_token),
            limit=clamp_limit(request.limit),
        )
        return wf.ListWorkflowsResponse(
            items=[workflow_to_proto(workflow) for workflow in page.workflows],
            next_page_token=page_token_from_workflow_cursor(page.next_cursor),
        )

    async def GetWorkflow(
        self, request: wf.GetWorkflowRequest, _context: grpc.aio.ServicerContext
    ) -> wf.GetWorkflowResponse:
        """The latest version of a workflow, or `version`."""
        workflow = await self._catalog.get_workflow(current_principal(), request.id, version=request.version or None)
        return wf.GetWorkflowResponse(workflow=self._rendered.render(workflow))

    async def ListWorkflowVersions(
        self, request: wf.ListWorkflowVersionsRequest, _context: grpc.aio.ServicerContext
    ) -> wf.ListWorkflowVersionsResponse:
        """Every version of a workflow, newest first."""
        page = await self._catalog.list_versions(
            current_principal(),
            request.id,
            before=version_from_page_token(request.page_token),
            limit=clamp_limit(request.limit),
        )
        return wf.ListWorkflowVersionsResponse(
            items=[workflow_to_proto(version) for version in page.versions],
            next_page_token=page_token_from_version(page.next_before),
        )

    async def UpdateWorkflow(
        self, request: wf.UpdateWorkflowRequest, _context: grpc.aio.ServicerContext
    ) -> wf.UpdateWorkflowResponse:
        """Saves version N+1; `etag` is the REST `If-Match`."""
        workflow = await self._catalog.update_workflow(
            current_principal(),
            request.id,
            definition_from_proto(request.workflow),
            status=workflow_status_from_proto(request.workflow.status),
            etag=request.etag or None,
        )
        return wf.UpdateWorkflowResponse(workflow=workflow_to_proto(workflow))

    async def DeleteWorkflow(
        self, request: wf.DeleteWorkflowRequest, _context: grpc.aio.ServicerContext
    ) -> wf.DeleteWorkflowResponse:
        """Soft-deletes a workflow."""
        await self._catalog.delete_workflow(current_principal(), request.id)
        return wf.DeleteWorkflowResponse()

    async def ListWorkflowTemplates(
        self, request: wf.ListWorkflowTemplatesRequest, _context: grpc.aio.ServicerContext
    ) -> wf.ListWorkflowTemplatesResponse:
        """Built-in and tenant templates together, by name."""
        page = await self._catalog.list_templates(
            current_principal(),
            after=template_name_from_page_token(request.page_token),
            limit=clamp_limit(request.limit),
        )
        return wf.ListWorkflowTemplatesResponse(
            items=[template_to_proto(template) for template in page.templates],
            next_page_token=page_token_from_template_name(page.next_after),
        )

    async def GetWorkflowTemplate(
        self, request: wf.GetWorkflowTemplateRequest, _context: grpc.aio.ServicerContext
    ) -> wf.GetWorkflowTemplateResponse:
        """One template, built-in or the tenant's."""
        template = await self._catalog.get_template(current_principal(), request.name)
        return wf.GetWorkflowTemplateResponse(template=template_to_proto(template))

    async def CreateWorkflowTemplate(
        self, request: wf.CreateWorkflowTemplateRequest, _context: grpc.aio.ServicerContext
    ) -> wf.CreateWorkflowTemplateResponse:
        """Saves a tenant template."""
        template = await self._catalog.create_template(current_principal(), template_from_proto(request.template))
        return wf.CreateWorkflowTemplateResponse(template=template_to_proto(template))

    async def CreateWorkflowFromTemplate(
        self, request: wf.CreateWorkflowFromTemplateRequest, _context: grpc.aio.ServicerContext
    ) -> wf.CreateWorkflowFromTemplateResponse:
        """Instantiates a template, then validates and saves the workflow."""
        workflow = await self._catalog.create_from_template(
            current_principal(), request.template_name, name=request.name, parameters=parameters_from_proto(request)
        )
        return wf.CreateWorkflowFromTemplateResponse(workflow=workflow_to_proto(workflow))

    async def ListStepTypes(
        self, _request: wf.ListStepTypesRequest, _context: grpc.aio.ServicerContext
    ) -> wf.ListStepTypesResponse:
        """Every step type with its config schema, straight from the registry the validator uses."""
        return wf.ListStepTypesResponse(items=[step_type_to_proto(step_type) for step_type in list_step_types()])


class AuditServiceServicer(audit_service_pb2_grpc.AuditServiceServicer):
    """This service's audit entries (agents, workflows, templates), for auth_svc to merge."""

    def __init__(self, audit_log: AuditLog) -> None:
        self._audit_log = audit_log

    async def ListAuditEntries(
        self, request: audit_service_pb2.ListAuditEntriesRequest, _context: grpc.aio.ServicerContext
    ) -> audit_service_pb2.ListAuditEntriesResponse:
        """The caller's tenant's entries, newest first, before the keyset position."""
        entries = await self._audit_log.list_entries(
            current_principal(), audit_query_from_proto(request, limit=clamp_limit(request.limit))
        )
        return audit_service_pb2.ListAuditEntriesResponse(items=[audit_entry_to_proto(entry) for entry in entries])
