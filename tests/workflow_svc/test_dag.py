"""DAG algorithms over step ids and depends_on, checked against naive reference implementations."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workflow_svc.domain.dag import (
    CycleError,
    ancestors,
    dependency_graph,
    find_cycle,
    find_cycles,
    topological_levels,
)

Graph = dict[str, list[str]]


def edges(size: int) -> st.SearchStrategy[list[tuple[int, int]]]:
    node = st.integers(0, size - 1)
    return st.lists(st.tuples(node, node), max_size=3 * size)


@st.composite
def dags(draw: st.DrawFn, min_size: int = 1, max_size: int = 40) -> Graph:
    """A random DAG: a step only depends on steps before it in a hidden order; definition order shuffled."""
    size = draw(st.integers(min_size, max_size))
    graph: Graph = {f"s{index}": [] for index in range(size)}
    for first, second in draw(edges(size)):
        later, earlier = max(first, second), min(first, second)
        if later != earlier and f"s{earlier}" not in graph[f"s{later}"]:
            graph[f"s{later}"].append(f"s{earlier}")
    definition_order = draw(st.permutations(list(graph)))
    return {step_id: graph[step_id] for step_id in definition_order}


@st.composite
def any_graphs(draw: st.DrawFn) -> Graph:
    """Random directed graphs, cycles and self-loops included."""
    size = draw(st.integers(1, 25))
    graph: Graph = {f"n{index}": [] for index in range(size)}
    for source, target in draw(edges(size)):
        if f"n{target}" not in graph[f"n{source}"]:
            graph[f"n{source}"].append(f"n{target}")
    return graph


def reachable(graph: Graph, start: str) -> set[str]:
    """Every step `start` depends on, directly or not (plain DFS: the reference)."""
    seen: set[str] = set()
    stack = list(graph[start])
    while stack:
        step_id = stack.pop()
        if step_id not in seen:
            seen.add(step_id)
            stack.extend(graph[step_id])
    return seen


def has_cycle(graph: Graph) -> bool:
    return any(step_id in reachable(graph, step_id) for step_id in graph)


def assert_is_cycle(graph: Graph, cycle: list[str]) -> None:
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1, "a cycle visits each step once"
    for step_id, dependency in itertools.pairwise(cycle):
        assert dependency in graph[step_id], f"{step_id} does not depend on {dependency}"


# --- properties --------------------------------------------------------------------------------


@given(dags())
def test_acyclic_graphs_are_accepted(graph: Graph) -> None:
    assert find_cycle(graph) is None
    assert find_cycles(graph) == []


@given(dags())
def test_levels_hold_every_step_once_and_respect_dependencies(graph: Graph) -> None:
    levels = topological_levels(graph)
    level_of = {step_id: number for number, level in enumerate(levels) for step_id in level}

    assert sorted(step_id for level in levels for step_id in level) == sorted(graph)
    assert len(level_of) == len(graph)
    for step_id, deps in graph.items():
        assert all(level_of[dep] < level_of[step_id] for dep in deps)
        # Kahn levels are as early as possible: a step sits right after its latest dependency.
        assert level_of[step_id] == (max(level_of[dep] for dep in deps) + 1 if deps else 0)
    definition_order = list(graph)
    for level in levels:
        assert level == sorted(level, key=definition_order.index)


@given(dags(min_size=2), st.data())
def test_a_planted_back_edge_is_always_found(graph: Graph, data: st.DataObject) -> None:
    # Plant: pick a step with ancestors and make one of its ancestors depend on it.
    candidates = [step_id for step_id in graph if reachable(graph, step_id)]
    if not candidates:
        first, second = list(graph)[:2]
        graph[second].append(first)
        candidates = [second]
    step_id = data.draw(st.sampled_from(sorted(candidates)))
    ancestor = data.draw(st.sampled_from(sorted(reachable(graph, step_id))))
    graph[ancestor].append(step_id)

    cycle = find_cycle(graph)

    assert cycle is not None
    assert_is_cycle(graph, cycle)
    with pytest.raises(CycleError) as caught:
        topological_levels(graph)
    assert_is_cycle(graph, caught.value.cycle)


@given(any_graphs())
def test_cycles_are_found_exactly_when_there_is_one(graph: Graph) -> None:
    cycles = find_cycles(graph)

    assert bool(cycles) == has_cycle(graph)
    for cycle in cycles:
        assert_is_cycle(graph, cycle)
    # One cycle per strongly connected component: no step in two reported cycles.
    members = [step_id for cycle in cycles for step_id in cycle[:-1]]
    assert len(members) == len(set(members))


@given(any_graphs())
def test_ancestors_match_plain_reachability(graph: Graph) -> None:
    assert ancestors(graph) == {step_id: reachable(graph, step_id) for step_id in graph}


@given(dags())
def test_the_steps_list_and_the_mapping_give_the_same_answers(graph: Graph) -> None:
    steps: list[dict[str, Any]] = [{"id": step_id, "depends_on": deps} for step_id, deps in graph.items()]

    assert topological_levels(steps) == topological_levels(graph)
    assert ancestors(steps) == ancestors(graph)


# --- examples ----------------------------------------------------------------------------------


def test_the_api_example_plan() -> None:
    steps: list[dict[str, Any]] = [
        {"id": "fetch"},
        {"id": "summarize", "depends_on": ["fetch"]},
        {"id": "classify", "depends_on": ["fetch"]},
        {"id": "notify", "depends_on": ["summarize", "classify"]},
    ]

    assert topological_levels(steps) == [["fetch"], ["summarize", "classify"], ["notify"]]
    assert ancestors(steps)["notify"] == {"fetch", "summarize", "classify"}


def test_a_cycle_is_named_from_its_first_defined_step_following_depends_on() -> None:
    graph = {"x": [], "a": ["c"], "b": ["a"], "c": ["b"]}

    assert find_cycle(graph) == ["a", "c", "b", "a"]
    with pytest.raises(CycleError, match=r"^cycle: a -> c -> b -> a$"):
        topological_levels(graph)


def test_a_self_dependency_is_a_cycle_of_one() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_the_shortest_cycle_through_the_first_step_is_named() -> None:
    graph = {"a": ["b", "d"], "b": ["c"], "c": ["a"], "d": ["a"]}

    assert find_cycle(graph) == ["a", "d", "a"]


def test_separate_cycles_are_each_reported() -> None:
    graph = {"a": ["b"], "b": ["a"], "m": [], "x": ["y"], "y": ["x"]}

    assert find_cycles(graph) == [["a", "b", "a"], ["x", "y", "x"]]


def test_unknown_and_repeated_dependencies_and_duplicate_ids_are_ignored() -> None:
    steps: list[dict[str, Any]] = [
        {"id": "a", "depends_on": ["ghost"]},
        {"id": "b", "depends_on": ["a", "a", 3]},
        {"id": "a", "depends_on": ["b"]},
        {"depends_on": ["a"]},
    ]

    assert dependency_graph(steps) == {"a": (), "b": ("a",)}
    assert topological_levels(steps) == [["a"], ["b"]]


def test_a_step_on_a_cycle_is_its_own_ancestor() -> None:
    assert ancestors({"a": ["b"], "b": ["a"], "c": ["a"]}) == {"a": {"a", "b"}, "b": {"a", "b"}, "c": {"a", "b"}}


def test_five_hundred_steps_are_fast_even_when_dense() -> None:
    chain = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(500)}
    dense = {f"s{i}": [f"s{j}" for j in range(i)] for i in range(500)}  # 124,750 edges
    cyclic = {**chain, "s0": ["s499"]}

    started = time.perf_counter()
    assert len(topological_levels(chain)) == 500
    assert len(ancestors(chain)["s499"]) == 499
    assert len(topological_levels(dense)) == 500
    assert len(ancestors(dense)["s499"]) == 499
    assert find_cycle(dense) is None
    cycle = find_cycle(cyclic)
    assert cycle is not None
    assert len(cycle) == 501
    assert time.perf_counter() - started < 5.0
