"""msrun_launcher.sh: argument checks, the exact msrun argv (fake msrun), and real 2-worker CPU jobs."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import FAILING_JOB_ENV, REPO

LAUNCHER = REPO / "msrun_launcher.sh"
VENV_BIN = str(Path(sys.executable).parent)  # msrun and the `python` it starts must come from this venv


def run_launcher(args, cwd, path_first=(), timeout=60, env_extra=None):
    """Run the launcher in its own session; on timeout interrupt msrun (it then kills its workers) and fail."""
    env = dict(os.environ, PATH=os.pathsep.join([*map(str, path_first), VENV_BIN, os.environ.get("PATH", "")]),
               **(env_extra or {}))
    env.pop("PYTHONPATH", None)  # the workers find solov2 as the user's would: installed in the venv
    p = subprocess.Popen(["bash", str(LAUNCHER), *args], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
        pytest.fail(f"launcher did not finish within {timeout}s: {args}")
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def script(tmp_path):
    (tmp_path / "train.py").write_text("print('never run by these tests')\n")
    return "train.py"


def test_help_exits_0():
    r = subprocess.run(["bash", str(LAUNCHER), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "Usage" in r.stdout and "JOIN=True" in r.stdout and "activate the venv" in r.stdout


@pytest.mark.parametrize("nargs", [0, 3, 4, 5, 7, 8, 10])
def test_wrong_argument_count_prints_usage(tmp_path, script, nargs):
    r = run_launcher([script, *["2"] * (nargs - 1)] if nargs else [], tmp_path)
    assert r.returncode == 2
    assert f"got {nargs}" in r.stderr and "Usage" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["2x"], "WORKER_NUM must be an integer >= 1, got '2x'"),
    (["0"], "WORKER_NUM must be an integer >= 1"),
    (["2", "3", "127.0.0.1", "8118", "0", "log", "True", "60"], "LOCAL_WORKER_NUM (3) must not exceed WORKER_NUM (2)"),
    (["2", "8118", "log", "yes", "60"], "JOIN must be True or False, got 'yes'"),
    (["2", "70000", "log", "True", "60"], "MASTER_PORT must be an integer in 1..65535"),
    (["2", "8118", "log", "True", "1m"], "CLUSTER_TIME_OUT must be an integer"),
    (["4", "2", "10.0.0.1", "8118", "2", "log", "True", "60"], "NODE_RANK 2 is too large"),
    # multi-node: msrun puts the scheduler where MASTER_ADDR is local, and a node that cannot find it waits
    # CLUSTER_TIME_OUT (.invalid never resolves, RFC 6761; 192.0.2.1 is a documentation address, RFC 5737)
    (["4", "2", "nosuchhost.invalid", "8118", "1", "log", "True", "60"],
     "MASTER_ADDR 'nosuchhost.invalid' is neither an IP address nor a host name this node can resolve"),
    # PORT: a free port (rank 0 tries its port first, and 8118 may be held by another job on this machine)
    (["4", "2", "192.0.2.1", "PORT", "0", "log", "True", "60"],
     "MASTER_ADDR 192.0.2.1 is not an address of this node, but NODE_RANK 0 hosts the scheduler"),
    (["4", "2", "127.0.0.1", "8118", "1", "log", "True", "60"],
     "MASTER_ADDR 127.0.0.1 is an address of this node, so msrun would start a second scheduler here"),
])
def test_bad_values(tmp_path, script, args, message):
    r = run_launcher([script, *[str(free_port()) if a == "PORT" else a for a in args]], tmp_path)
    assert r.returncode == 2
    assert message in r.stderr, r.stderr
    assert r.stdout == ""  # nothing was launched


@pytest.mark.parametrize("command", ["missing.py --config x", "python missing.py", "python"])
def test_missing_script(tmp_path, command):
    r = run_launcher([command, "2"], tmp_path)
    assert r.returncode == 2
    assert "script not found: 'missing.py'" in r.stderr or "no script in the command" in r.stderr


def test_port_in_use_is_one_line_before_launching(tmp_path, script):
    import socket
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run_launcher([script, "2", str(port), "log", "True", "60"], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"MASTER_PORT {port} is already in use" in r.stderr and r.stdout == ""  # msrun was never started


def test_a_port_whose_last_connection_is_in_time_wait_is_free(tmp_path, script):
    """The previous job on this port has ended, but the scheduler's side of one of its connections waits in
    TIME-WAIT for a minute: nothing listens, so the port is free for msrun (a plain bind() said 'in use')."""
    import socket
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as a server sets it, msrun's scheduler too
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()     # the listening side closes first: its end of the connection enters TIME-WAIT
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("", port))     # the old check's bind
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "msrun").write_text(f"#!{sys.executable}\nprint('fake msrun started')\n")
    (bin_dir / "msrun").chmod(0o755)
    r = run_launcher([script, "2", str(port), "log", "True", "60"], tmp_path, path_first=[bin_dir])
    assert r.returncode == 0 and "fake msrun started" in r.stdout, r.stdout + r.stderr


def test_msrun_not_on_path(tmp_path, script):
    env = dict(os.environ, PATH="/usr/bin:/bin")
    r = subprocess.run(["bash", str(LAUNCHER), script, "2"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "msrun is not on PATH" in r.stderr and "activate" in r.stderr


@pytest.fixture
def fake_msrun(tmp_path):
    """An `msrun` that records its argv and PYTHONPATH (None: unset) as JSON and exits 3."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "msrun"
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                   "json.dump({'argv': sys.argv[1:], 'pythonpath': os.environ.get('PYTHONPATH')}, open('argv.json', 'w'))\n"
                   "sys.exit(3)\n")
    exe.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("args, expected", [
    ([], ["--worker_num=8", "--local_worker_num=8", "--master_port=8118", "--log_dir=output/msrun_log",
          "--join=True", "--cluster_time_out=600"]),
    (["4"], ["--worker_num=4", "--local_worker_num=4", "--master_port=8118", "--log_dir=output/msrun_log",
             "--join=True", "--cluster_time_out=600"]),
    (["2", "9000", "my logs", "False", "-1"], ["--worker_num=2", "--local_worker_num=2", "--master_port=9000",
                                               "--log_dir=my logs", "--join=False", "--cluster_time_out=-1"]),
    # single node in the 9-argument form: mindformers leaves out --master_addr/--node_rank
    (["2", "2", "10.0.0.1", "9000", "0", "L", "True", "60"],
     ["--worker_num=2", "--local_worker_num=2", "--master_port=9000", "--log_dir=L", "--join=True",
      "--cluster_time_out=60"]),
    (["16", "8", "10.0.0.1", "9000", "1", "L", "True", "60"],
     ["--worker_num=16", "--local_worker_num=8", "--master_addr=10.0.0.1", "--node_rank=1", "--master_port=9000",
      "--log_dir=L", "--join=True", "--cluster_time_out=60"]),
])
def test_msrun_argv_and_exit_code(tmp_path, script, fake_msrun, args, expected, monkeypatch):
    # msrun's argv only: the MASTER_ADDR check (test_bad_values) would make the multi-node row depend on the network
    monkeypatch.setenv("MSRUN_LAUNCHER_NO_ADDR_CHECK", "1")
    # Shell syntax in the command must reach msrun as plain words, never be evaluated.
    command = f"python {script} --config 'a b' $(touch pwned) *"
    r = run_launcher([command, *args], tmp_path, path_first=[fake_msrun])
    assert r.returncode == 3, r.stderr  # msrun's status is the launcher's status
    got = json.loads((tmp_path / "argv.json").read_text())
    assert got["argv"] == expected + ["python", script, "--config", "'a", "b'", "$(touch", "pwned)", "*"]
    assert got["pythonpath"] is None  # no path trick: train_multi.py imports the installed package
    assert not (tmp_path / "pwned").exists()
    assert "Running command: msrun --worker_num=" in r.stdout
    assert "scheduler.log" in r.stdout and "worker_*.log" in r.stdout


# --- real msrun jobs: 2 CPU workers (about 15 s each on this 2-core box) ---
TINY_JOB = textwrap.dedent("""
    import json, os, sys
    import mindspore as ms
    import solov2
    from mindspore import Tensor, ops
    from mindspore.communication import get_group_size, get_rank, init

    ms.set_device("CPU")
    init()  # msrun's scheduler (MS_ROLE=MS_SCHED) also runs this file: side effects only below this line
    rank, size = get_rank(), get_group_size()
    if rank == 1 and "--fail" in sys.argv:   # as the port's commands fail: one line, exit 2
        print("error: rank 1 fails on purpose", file=sys.stderr)
        sys.exit(2)
    total = ops.AllReduce()(Tensor([float(rank + 1)], ms.float32)).asnumpy().tolist()
    with open(f"rank_{rank}.json", "w") as f:
        json.dump({"size": size, "sum": total, "solov2": solov2.__file__}, f)
""")


def test_two_workers_all_reduce(tmp_path):
    (tmp_path / "job.py").write_text(TINY_JOB)
    r = run_launcher(["job.py", "2", str(free_port()), "logs", "True", "60"], tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("rank_*.json")) == ["rank_0.json", "rank_1.json"]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank_{rank}.json").read_text())
        assert got["size"] == 2 and got["sum"] == [3.0]  # 1 + 2 on both ranks
        assert got["solov2"] == str(REPO / "src" / "solov2" / "__init__.py")  # the venv's install, from any cwd
    assert {p.name for p in (tmp_path / "logs").iterdir()} >= {"scheduler.log", "worker_0.log", "worker_1.log"}
    assert "Logs: logs/scheduler.log, logs/worker_*.log" in r.stdout


def test_failing_rank_makes_launcher_fail(tmp_path):
    (tmp_path / "job.py").write_text(TINY_JOB)
    r = run_launcher(["job.py --fail", "2", str(free_port()), "logs", "True", "60"], tmp_path, timeout=240,
                     env_extra=FAILING_JOB_ENV)
    assert r.returncode != 0
    assert not (tmp_path / "rank_1.json").exists()
    assert "rank 1 fails on purpose" in (tmp_path / "logs" / "worker_1.log").read_text()
    assert "Logs: logs/scheduler.log" in r.stdout
    # the cause in one line, with the worker log's path
    assert "msrun_launcher.sh: error: worker_1.log: rank 1 fails on purpose (log: logs/worker_1.log)" in r.stderr, \
        r.stderr[-3000:]


def test_a_crashing_rank_is_named_by_its_exception(tmp_path, script):
    """No `error:` line in this job's worker logs: the last exception line of a traceback, with its log (msrun faked:
    it writes the logs a crashed job leaves, a progress bar's \\r included, and exits 3). An older log in the same
    folder, from an earlier job, is not this job's cause."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "worker_5.log").write_text("error: an earlier job's failure\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "msrun"
    exe.write_text(f"#!{sys.executable}\nimport sys, time\ntime.sleep(0.05)\n"
                   "open('logs/worker_0.log', 'w').write('epoch 1/2: 40%|####  | 2/5\\r')\n"
                   "open('logs/worker_1.log', 'w').write('Traceback (most recent call last):\\n'\n"
                   "                                     '  File \"job.py\", line 3\\n'\n"
                   "                                     'RuntimeError: rank 1 crashes on purpose\\n')\n"
                   "sys.exit(3)\n")
    exe.chmod(0o755)
    r = run_launcher([f"{script}", "2", str(free_port()), "logs", "True", "60"], tmp_path, path_first=[bin_dir])
    assert r.returncode == 3
    errors = [s for s in r.stderr.splitlines() if "msrun_launcher.sh: error:" in s]
    assert errors == ["msrun_launcher.sh: error: worker_1.log: RuntimeError: rank 1 crashes on purpose "
                      "(log: logs/worker_1.log)"], r.stderr[-3000:]
    assert not list((tmp_path / "logs").glob(".launch.*"))
