"""Algorithms over the step graph (each step id -> the ids it depends on): cycles, levels, ancestry.

Every function accepts either the workflow's `steps` list (dicts with `id` and `depends_on`) or
a mapping `step id -> depends_on` whose insertion order is the definition order. Dependencies
on ids that are not steps are ignored here (the validator reports them), and so are the later
copies of a duplicated id. All functions are iterative and linear in steps + edges (ancestry is
quadratic in the worst case, done with integer bit sets), so 500 steps take milliseconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeAlias

DependencyGraph: TypeAlias = Mapping[str, Collection[str]]
"""Step id -> ids of the steps it depends on, in definition order."""

Steps: TypeAlias = DependencyGraph | Iterable[Mapping[str, Any]]
"""A dependency graph, or the `steps` list of a workflow definition."""


class CycleError(ValueError):
    """The steps do not form a DAG; `cycle` names one cycle, e.g. ["a", "b", "a"]."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("cycle: " + " -> ".join(cycle))


def dependency_graph(steps: Steps) -> dict[str, tuple[str, ...]]:
    """Normalises `steps`: definition order kept, unknown and repeated dependencies dropped."""
    if isinstance(steps, Mapping):
        raw: dict[str, Collection[str]] = {str(key): value for key, value in steps.items()}
    else:
        raw = {}
        for step in steps:
            step_id = step.get("id")
            if isinstance(step_id, str) and step_id not in raw:
                raw[step_id] = [dep for dep in step.get("depends_on") or () if isinstance(dep, str)]
    return {step_id: tuple(dict.fromkeys(dep for dep in deps if dep in raw)) for step_id, deps in raw.items()}


def find_cycles(steps: Steps) -> list[list[str]]:
    """One cycle per strongly connected component that has one, in definition order.

    Each cycle starts and ends at the component's first-defined step and follows `depends_on`
    (every step depends on the next); it is a shortest cycle through that step, so the message
    built from it stays readable. A self-dependency is the cycle [a, a].
    """
    graph = dependency_graph(steps)
    order = {step_id: index for index, step_id in enumerate(graph)}
    cycles = []
    for component in _strongly_connected_components(graph):
        start = min(component, key=order.__getitem__)
        if len(component) > 1 or start in graph[start]:
            cycles.append((order[start], _shortest_cycle(graph, start, set(component))))
    return [cycle for _, cycle in sorted(cycles)]


def find_cycle(steps: Steps) -> list[str] | None:
    """A cycle of the graph as step ids, first id repeated at the end (["a", "b", "c", "a"]), or None."""
    cycles = find_cycles(steps)
    return cycles[0] if cycles else None


def topological_levels(steps: Steps) -> list[list[str]]:
    """Kahn levels: level 0 has no dependencies, level n depends on level n-1 and below.

    A step sits at the length of the longest dependency chain leading to it, so a level is
    what could start together; each level is in definition order. Raises CycleError.
    """
    graph = dependency_graph(steps)
    order = {step_id: index for index, step_id in enumerate(graph)}
    dependents: dict[str, list[str]] = {step_id: [] for step_id in graph}
    waiting = {step_id: len(deps) for step_id, deps in graph.items()}
    for step_id, deps in graph.items():
        for dep in deps:
            dependents[dep].append(step_id)
    level = [step_id for step_id, count in waiting.items() if count == 0]
    levels: list[list[str]] = []
    placed = 0
    while level:
        levels.append(level)
        placed += len(level)
        following = []
        for step_id in level:
            for dependent in dependents[step_id]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    following.append(dependent)
        level = sorted(following, key=order.__getitem__)
    if placed < len(graph):
        cycle = find_cycle(graph)
        assert cycle is not None  # Kahn stalls only on a cycle
        raise CycleError(cycle)
    return levels


def ancestors(steps: Steps) -> dict[str, set[str]]:
    """Every step id -> the ids of all steps it depends on, directly or transitively.

    Defined on any graph: a step on a cycle is its own ancestor. Components are collapsed
    first, then ancestry flows from dependencies to dependents as integer bit sets.
    """
    graph = dependency_graph(steps)
    ids = list(graph)
    bit = {step_id: 1 << index for index, step_id in enumerate(ids)}
    masks: dict[str, int] = {}
    # Tarjan emits a component only after every component it depends on.
    for component in _strongly_connected_components(graph):
        members = set(component)
        mask = 0
        for step_id in component:
            for dep in graph[step_id]:
                if dep not in members:
                    mask |= bit[dep] | masks[dep]
        if len(component) > 1 or component[0] in graph[component[0]]:
            for step_id in component:
                mask |= bit[step_id]
        for step_id in component:
            masks[step_id] = mask
    return {step_id: _ids_of(masks[step_id], ids) for step_id in ids}


def _ids_of(mask: int, ids: list[str]) -> set[str]:
    found = set()
    while mask:
        lowest = mask & -mask
        found.add(ids[lowest.bit_length() - 1])
        mask ^= lowest
    return found


def _strongly_connected_components(graph: Mapping[str, Collection[str]]) -> list[list[str]]:
    """Tarjan's algorithm without recursion (a 500-step chain would near the recursion limit).

    Components come out dependencies first: one is emitted after all those it can reach.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def enter(step_id: str) -> None:
        index[step_id] = low[step_id] = len(index)
        stack.append(step_id)
        on_stack.add(step_id)

    for root in graph:
        if root in index:
            continue
        enter(root)
        work = [(root, iter(graph[root]))]
        while work:
            step_id, deps = work[-1]
            descended = False
            for dep in deps:
                if dep not in index:
                    enter(dep)
                    work.append((dep, iter(graph[dep])))
                    descended = True
                    break
                if dep in on_stack:
                    low[step_id] = min(low[step_id], index[dep])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[step_id])
            if low[step_id] == index[step_id]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == step_id:
                        break
                components.append(component)
    return components


def _shortest_cycle(graph: Mapping[str, Collection[str]], start: str, component: set[str]) -> list[str]:
    """Breadth-first search from `start` back to itself inside its component."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        step_id = queue.popleft()
        for dep in graph[step_id]:
            if dep == start:
                path = [step_id]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if dep in component and dep not in previous:
                previous[dep] = step_id
                queue.append(dep)
    raise AssertionError(f"{start!r} is not on a cycle")  # callers pass a cyclic component
