"""The builder's ordered parallel map."""

import os
import signal
import subprocess
import sys
import textwrap

from data_tools.parallel import ordered_map


def _square(x: int) -> int:
    return x * x


def test_results_come_back_in_input_order():
    assert [r for _, r in ordered_map(_square, range(50), workers=2, chunksize=3)] == [x * x for x in range(50)]


def test_a_pool_ends_in_a_process_whose_sigterm_handler_only_takes_note():
    """The trainer's CLI, run in-process (as the tests run it), installs SIGTERM/SIGUSR1 handlers that only
    note the signal. Forked workers inherited them and ignored the terminate() that ends a pool whose
    consumer stops early (an error, or a build cut short) while they are busy: the process hung."""
    script = textwrap.dedent("""
        import signal, time
        from data_tools.parallel import ordered_map
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        for _ in ordered_map(time.sleep, [0.2] * 40, workers=2, chunksize=1):
            break
        print("ended")
    """)
    # The child ignores SIGTERM too, so only SIGKILL (of its whole group: the workers) ends a hang.
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise AssertionError("the pool never ended: its workers ignored terminate()")
    assert child.returncode == 0 and out.strip() == "ended", err
