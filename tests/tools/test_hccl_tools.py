"""hccl_tools.py / solov2.tools.hccl: rank-table JSON, device-IP sources, input errors, merge, overwrite protection."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from solov2.tools import hccl
from conftest import REPO

IPS = {i: f"192.168.10{i // 4}.{10 + i}" for i in range(8)}


@pytest.fixture
def conf(tmp_path):
    p = tmp_path / "hccn.conf"
    p.write_text("".join(f"address_{i}={ip}\nnetmask_{i}=255.255.255.0\n" for i, ip in IPS.items()))
    return p


@pytest.fixture(autouse=True)
def no_hccn_tool(monkeypatch, tmp_path):
    """Tests see only an empty bin dir (plus the interpreter's), so a real hccn_tool never leaks in."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", os.pathsep.join([str(empty), str(Path(sys.executable).parent), "/usr/bin", "/bin"]))
    assert hccl.shutil.which("hccn_tool") is None, "a real hccn_tool is on PATH"


def expected(server, ids, ips=IPS):
    return {"version": "1.0", "server_count": "1",
            "server_list": [{"server_id": server,
                             "device": [{"device_id": str(i), "device_ip": ips[i], "rank_id": str(r)}
                                        for r, i in enumerate(ids)],
                             "host_nic_ip": "reserve"}],
            "status": "completed"}


def run(args, tmp_path, capsys):
    rc = hccl.main([*args, "--output_dir", str(tmp_path / "out")] if args[:1] != ["merge"] else args)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("device_num, visible, ids, name", [
    ("[0,8)", None, [0, 1, 2, 3, 4, 5, 6, 7], "hccl_8p_01234567_10.1.2.3.json"),
    ("[0,4)", None, [0, 1, 2, 3], "hccl_4p_0123_10.1.2.3.json"),
    ("[4,8)", None, [4, 5, 6, 7], "hccl_4p_4567_10.1.2.3.json"),
    ("[0,4)", "4,5,6,7", [4, 5, 6, 7], "hccl_4p_4567_10.1.2.3.json"),  # container sees physical 4-7 as 0-3
    ("[1,3)", "6,7,4,5", [7, 4], "hccl_2p_74_10.1.2.3.json"),
    (" [ 0 , 2 ) ", None, [0, 1], "hccl_2p_01_10.1.2.3.json"),
])
def test_table_from_hccn_conf(tmp_path, capsys, conf, device_num, visible, ids, name):
    args = ["--device_num", device_num, "--hccn_conf", str(conf), "--server_ip", "10.1.2.3"]
    rc, out, err = run(args + (["--visible_devices", visible] if visible else []), tmp_path, capsys)
    assert rc == 0, err
    path = tmp_path / "out" / name
    text = path.read_text()
    assert json.loads(text) == expected("10.1.2.3", ids)
    assert text == json.dumps(expected("10.1.2.3", ids), indent=4) + "\n"  # key order and indent 4 as the original
    assert out.strip() == f"Completed: hccl file was saved in {path.resolve()}"


def test_multi_digit_ids_and_range(tmp_path, capsys):
    conf = tmp_path / "hccn16.conf"
    conf.write_text("".join(f"address_{i} = 10.9.0.{i}\n" for i in range(16)))
    visible = ",".join(map(str, range(8, 16)))
    rc, _, err = run(["--device_num", "[0,4)", "--visible_devices", visible, "--hccn_conf", str(conf),
                      "--server_ip", "10.0.0.1"], tmp_path, capsys)
    assert rc == 0, err
    table = json.loads((tmp_path / "out" / "hccl_4p_891011_10.0.0.1.json").read_text())
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["8", "9", "10", "11"]
    assert table["server_list"][0]["device"][3]["device_ip"] == "10.9.0.11"
    wide = ",".join(map(str, range(12)))
    rc, _, err = run(["--device_num", "[8,12)", "--visible_devices", wide, "--hccn_conf", str(conf),
                      "--server_ip", "10.0.0.1", "--force"], tmp_path, capsys)
    assert rc == 0, err  # two-digit bounds select the same physical devices 8-11
    assert json.loads((tmp_path / "out" / "hccl_4p_891011_10.0.0.1.json").read_text()) == table


def test_fake_hccn_tool_takes_precedence(tmp_path, capsys, conf, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "hccn_tool"
    # like the real tool: `hccn_tool -i <id> -ip -g` prints ipaddr:<ip> and netmask:<mask>
    tool.write_text('#!/bin/sh\necho "ipaddr:172.16.0.$2"\necho "netmask:255.255.255.0"\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    rc, _, err = run(["--device_num", "[4,8)", "--hccn_conf", str(conf), "--server_ip", "10.1.2.3"],
                     tmp_path, capsys)
    assert rc == 0, err
    ips = {i: f"172.16.0.{i}" for i in range(4, 8)}
    assert json.loads((tmp_path / "out" / "hccl_4p_4567_10.1.2.3.json").read_text()) == \
        expected("10.1.2.3", [4, 5, 6, 7], ips)
    assert "--hccn_conf" in err  # the user is told their file was not read


def test_hccn_tool_without_ip(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hccn_tool").write_text("#!/bin/sh\necho 'Get ip fail' >&2\nexit 1\n")
    (bin_dir / "hccn_tool").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    rc, _, err = run(["--device_num", "[0,4)", "--server_ip", "10.1.2.3"], tmp_path, capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "hccn_tool -i 0 -ip -g' gave no ipaddr" in err and "Get ip fail" in err


@pytest.mark.parametrize("args, message", [
    (["--device_num", "[0,9)"], "needs 0 <= a < b <= 8"),
    (["--device_num", "[4,4)"], "needs 0 <= a < b <= 8"),
    (["--device_num", "[0,4)", "--visible_devices", "0,1"], "needs 0 <= a < b <= 2"),
    (["--device_num", "0-8"], "must look like [0,8)"),
    (["--device_num", "[0,8]"], "must look like [0,8)"),
    (["--device_num", "[-1,4)"], "must look like [0,8)"),
    (["--device_num", "[3,6)"], "devices 3,4,5 span both 4-chip groups (0-3 and 4-7)"),
    (["--device_num", "[0,4)", "--visible_devices", "2,3,4,5"], "devices 2,3,4,5 span both 4-chip groups"),
    (["--visible_devices", "0,1,x"], "--visible_devices must be comma-separated"),
    (["--visible_devices", "0,1,1,2"], "must be distinct"),
    (["--server_ip", "not-an-ip"], "--server_ip: 'not-an-ip' is not an IP address"),
])
def test_bad_input(tmp_path, capsys, conf, args, message):
    rc, out, err = run([*args, "--hccn_conf", str(conf)] + ([] if "--server_ip" in args else
                                                             ["--server_ip", "10.1.2.3"]), tmp_path, capsys)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_no_hccn_source(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hccl, "DEFAULT_HCCN_CONF", str(tmp_path / "etc" / "hccn.conf"))
    rc, _, err = run(["--server_ip", "10.1.2.3"], tmp_path, capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "no hccn_tool on PATH and" in err and "does not look like an Ascend host; pass --hccn_conf" in err
    rc, _, err = run(["--server_ip", "10.1.2.3", "--hccn_conf", str(tmp_path / "nope.conf")], tmp_path, capsys)
    assert rc == 2 and "--hccn_conf" in err and "nope.conf not found" in err


def test_conf_missing_ids(tmp_path, capsys):
    conf = tmp_path / "partial.conf"
    conf.write_text("address_0=192.168.1.1\naddress_1=192.168.1.2\n")
    rc, _, err = run(["--device_num", "[0,4)", "--hccn_conf", str(conf), "--server_ip", "10.1.2.3"], tmp_path, capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "partial.conf has no address_<id> line for device(s) 2,3" in err


def test_loopback_hostname_needs_server_ip(tmp_path, capsys, conf, monkeypatch):
    monkeypatch.setattr(hccl.socket, "gethostbyname", lambda host: "127.0.1.1")  # as in many containers
    rc, _, err = run(["--hccn_conf", str(conf)], tmp_path, capsys)
    assert rc == 2 and err.count("\n") == 1 and "127.0.1.1" in err and "pass --server_ip" in err
    monkeypatch.setattr(hccl.socket, "gethostbyname", lambda host: "10.7.7.7")
    rc, _, err = run(["--hccn_conf", str(conf)], tmp_path, capsys)
    assert rc == 0, err
    assert (tmp_path / "out" / "hccl_8p_01234567_10.7.7.7.json").exists()


def test_no_overwrite_without_force(tmp_path, capsys, conf):
    args = ["--device_num", "[0,2)", "--hccn_conf", str(conf), "--server_ip", "10.1.2.3"]
    path = tmp_path / "out" / "hccl_2p_01_10.1.2.3.json"
    assert run(args, tmp_path, capsys)[0] == 0
    path.write_text("keep me")
    rc, _, err = run(args, tmp_path, capsys)
    assert rc == 2 and "already exists; pass --force" in err and path.read_text() == "keep me"
    assert run(args + ["--force"], tmp_path, capsys)[0] == 0
    assert json.loads(path.read_text()) == expected("10.1.2.3", [0, 1])


def test_merge_two_servers(tmp_path, capsys, conf):
    other = tmp_path / "hccn_other.conf"   # the second server's devices have their own NIC addresses
    other.write_text("".join(f"address_{i}=192.168.20{i // 4}.{10 + i}\n" for i in range(8)))
    for ip, c in (("10.0.0.2", conf), ("10.0.0.1", other)):  # file order, not server ip order, decides the ranks
        assert run(["--hccn_conf", str(c), "--server_ip", ip], tmp_path, capsys)[0] == 0
    a, b = (str(tmp_path / "out" / f"hccl_8p_01234567_{ip}.json") for ip in ("10.0.0.2", "10.0.0.1"))
    rc, out, err = run(["merge", a, b, "--output_dir", str(tmp_path / "merged")], tmp_path, capsys)
    assert rc == 0, err
    path = tmp_path / "merged" / "hccl_2s_16p.json"
    table = json.loads(path.read_text())
    assert out.strip() == f"Completed: hccl file was saved in {path.resolve()}"
    assert table["server_count"] == "2" and table["version"] == "1.0" and table["status"] == "completed"
    assert [s["server_id"] for s in table["server_list"]] == ["10.0.0.2", "10.0.0.1"]
    devices = [d for s in table["server_list"] for d in s["device"]]
    assert [d["rank_id"] for d in devices] == [str(r) for r in range(16)]
    assert [d["device_id"] for d in devices] == [str(i) for i in range(8)] * 2
    assert all(s["host_nic_ip"] == "reserve" for s in table["server_list"])
    # same protections as a single table
    rc, _, err = run(["merge", a, b, "--output_dir", str(tmp_path / "merged")], tmp_path, capsys)
    assert rc == 2 and "already exists; pass --force" in err
    rc, _, err = run(["merge", a, a, "--output_dir", str(tmp_path / "m2")], tmp_path, capsys)
    assert rc == 2 and "server_id 10.0.0.2 appears in more than one table" in err
    (tmp_path / "junk.json").write_text("{}")
    rc, _, err = run(["merge", a, str(tmp_path / "junk.json")], tmp_path, capsys)
    assert rc == 2 and "is not a rank table" in err
    os.mkfifo(tmp_path / "fifo.json")   # refused without being opened: reading it would block forever
    rc, _, err = run(["merge", a, str(tmp_path / "fifo.json")], tmp_path, capsys)
    assert rc == 2 and err == f"error: {tmp_path / 'fifo.json'}: not a regular file (a folder, FIFO or device)\n"


def test_root_cli_writes_to_cwd(tmp_path, conf):
    """The thin root script: default output dir is the cwd; errors are one line with exit code 2."""
    cli = [sys.executable, str(REPO / "hccl_tools.py")]
    r = subprocess.run(cli + ["--device_num", "[0,4)", "--hccn_conf", str(conf), "--server_ip", "10.1.2.3"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "hccl_4p_0123_10.1.2.3.json").read_text()) == expected("10.1.2.3", [0, 1, 2, 3])
    r = subprocess.run(cli + ["--device_num", "[2,6)", "--hccn_conf", str(conf), "--server_ip", "10.1.2.3"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "4-chip groups" in r.stderr


def _table(path, servers):
    """A rank table file of [(server_id, [(device_id, device_ip), ...]), ...]."""
    path.write_text(json.dumps(hccl.rank_table(servers)))
    return str(path)


def test_merge_refuses_tables_that_cannot_work_together(tmp_path, capsys):
    """Duplicate device ids in a server, a device IP used twice across the tables, a malformed IP, and an output
    that is one of the input tables (even with --force): one line each, nothing written."""
    good = _table(tmp_path / "a.json", [("10.0.0.1", [(0, "192.168.1.10"), (1, "192.168.1.11")])])
    cases = [
        ([("10.0.0.2", [(0, "192.168.2.10"), (0, "192.168.2.11")])], "lists device_id 0 more than once"),
        ([("10.0.0.2", [(0, "192.168.1.10")])], "device_ip 192.168.1.10 appears more than once"),
        ([("10.0.0.2", [(0, "192.168.2.300")])], "'192.168.2.300' is not an IP address"),
        ([("server-b", [(0, "192.168.2.10")])], "server_id: 'server-b' is not an IP address"),
    ]
    for i, (servers, message) in enumerate(cases):
        other = _table(tmp_path / f"b{i}.json", servers)
        rc, _, err = run(["merge", good, other, "--output_dir", str(tmp_path / "out")], tmp_path, capsys)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    # the output name of a 2-server, 3-device merge is an input table's name: refused, --force or not
    other = _table(tmp_path / "hccl_2s_3p.json", [("10.0.0.2", [(0, "192.168.2.10")])])
    before = (tmp_path / "hccl_2s_3p.json").read_bytes()
    rc, _, err = run(["merge", good, other, "--output_dir", str(tmp_path), "--force"], tmp_path, capsys)
    assert rc == 2 and "is the input rank table" in err and "even with --force" in err, err
    assert (tmp_path / "hccl_2s_3p.json").read_bytes() == before


def test_a_non_utf8_hccn_conf_is_one_line(tmp_path, capsys):
    conf = tmp_path / "hccn.conf"
    conf.write_bytes(b"address_0=\xff\xfe\n")
    rc, _, err = run(["--hccn_conf", str(conf), "--device_num", "[0,1)", "--server_ip", "10.0.0.1"], tmp_path,
                     capsys)
    assert rc == 2 and "not a text file (not UTF-8)" in err and len(err.strip().splitlines()) == 1, err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(hccl, "merge_tables", interrupted)
    rc, _, err = run(["merge", str(tmp_path / "a.json")], tmp_path, capsys)
    assert rc == 130 and err == "interrupted\n"
