"""The kernel's own scenarios (tests/kernel/test_kernel.py) on a real Ray cluster.

The ``kernel`` fixture here is a kernel on the Ray backend, so each test below is the very
test the cellfleet backend passes, run unchanged on Ray: magics, output routing, interrupts,
progress. (``test_resource_options`` is not among them: its second half waits for cellfleet's
own "cannot be scheduled yet" notice; ``test_ray_kernel_extras`` checks resources on Ray.)
"""

from __future__ import annotations

import pytest
from test_kernel import (  # noqa: F401 - collected here, on the Ray backend's kernel
    test_actor_namespace_persists,
    test_all_nodes_runs_once_per_node,
    test_an_option_typo_names_the_closest_option,
    test_cellfleet_is_in_the_namespace_and_tasks_run,
    test_cluster_magic_shows_the_cluster,
    test_interrupt_during_get_cancels_the_cells_tasks,
    test_interrupt_during_remote_cell,
    test_long_get_on_many_refs_shows_a_progress_bar_that_goes_away,
    test_node_option_is_accepted,
    test_nowait_returns_a_handle_and_names_arrive,
    test_objectrefs_travel_by_reference_and_remote_functions_travel,
    test_output_lands_under_its_own_cell_after_another_cell_ran,
    test_prints_stream_live_while_the_cell_runs,
    test_remote_error_points_at_the_cells_own_line,
    test_remote_line_magic,
    test_remote_push_and_pull_override_the_analysis,
    test_remote_ships_reads_and_pulls_assignments,
    test_remote_syntax_error_runs_nothing,
    test_unshippable_name_is_named_before_anything_runs,
)

pytestmark = pytest.mark.integration
