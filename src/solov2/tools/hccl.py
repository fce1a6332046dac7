"""Ascend HCCL rank tables (the JSON that RANK_TABLE_FILE points to): one server's table, and merging tables.

Same file name and schema as MindSpore model-zoo `utils/hccl_tools/hccl_tools.py` and `merge_hccl.py`, with stricter
input checks and one-line errors. msrun's dynamic cluster does not need a rank table; this is for rank-table startup
(and `msrun --rank_table_file`, which only exports RANK_TABLE_FILE). No MindSpore import: it runs on a bare host.
"""
import argparse
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from solov2.errors import SolovError, check_file
from solov2.files import UMASK, check_not_an_input, check_writable, write_json_atomic

DEFAULT_HCCN_CONF = "/etc/hccn.conf"


class HcclError(SolovError):
    """A problem with the user's input or host; the CLI prints it as one line and exits 2."""


def parse_visible_devices(text: str) -> List[int]:
    try:
        ids = [int(t) for t in text.split(",")]
    except ValueError:
        raise HcclError(f"--visible_devices must be comma-separated device ids like 0,1,2,3, got {text!r}") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise HcclError(f"--visible_devices must be distinct ids >= 0, got {text!r}")
    return ids


def parse_device_range(text: str, n_visible: int) -> Tuple[int, int]:
    """'[a,b)' (spaces and multi-digit numbers allowed) -> (a, b), indices into the visible devices."""
    m = re.fullmatch(r"\s*\[\s*(\d+)\s*,\s*(\d+)\s*\)\s*", text)
    if not m:
        raise HcclError(f"--device_num must look like [0,8) (a half-open range), got {text!r}")
    first, last = int(m.group(1)), int(m.group(2))
    if not 0 <= first < last <= n_visible:
        raise HcclError(f"--device_num {text!r} needs 0 <= a < b <= {n_visible} (the number of visible devices)")
    return first, last


def check_chip_groups(ids: Sequence[int]) -> None:
    """Ascend 910 servers link chips 0-3 and 4-7 as two groups (HCCS); a job uses one group or all 8 chips.

    Checked on physical ids, so container mappings like --visible_devices 4,5,6,7 with [0,4) pass.
    """
    low, high = [i for i in ids if i < 4], [i for i in ids if 4 <= i < 8]
    if low and high and sorted(ids) != list(range(8)):
        raise HcclError(f"devices {','.join(map(str, ids))} span both 4-chip groups (0-3 and 4-7); HCCL on Ascend 910 "
                        "needs all devices in one group or all 8 - use e.g. [0,4), [4,8) or [0,8)")


def _valid_ip(ip: str, where: str) -> str:
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise HcclError(f"{where}: {ip!r} is not an IP address") from None
    return ip


def _ips_from_hccn_tool(tool: str, ids: Sequence[int]) -> Dict[int, str]:
    ips = {}
    for i in ids:
        cmd = [tool, "-i", str(i), "-ip", "-g"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise HcclError(f"'{' '.join(cmd)}' failed: {e}") from None
        m = re.search(r"ipaddr\s*:\s*(\S+)", r.stdout)
        if r.returncode != 0 or not m:
            said = " ".join((r.stdout + r.stderr).split())[:200]
            raise HcclError(f"'{' '.join(cmd)}' gave no ipaddr (exit {r.returncode}: {said!r}); "
                            f"is the NIC IP of device {i} configured?")
        ips[i] = _valid_ip(m.group(1), f"hccn_tool -i {i}")
    return ips


def _ips_from_hccn_conf(path: Path, ids: Sequence[int]) -> Dict[int, str]:
    # hccn.conf holds lines like address_0=192.168.100.101 (plus netmask_0=..., etc.)
    found = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HcclError(f"{path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise HcclError(f"{path}: not a text file (not UTF-8); expected address_<id>=<ip> lines") from None
    for line in text.splitlines():
        m = re.fullmatch(r"\s*address_(\d+)\s*=\s*(\S+)\s*", line)
        if m:
            found[int(m.group(1))] = m.group(2)
    missing = [i for i in ids if i not in found]
    if missing:
        raise HcclError(f"{path} has no address_<id> line for device(s) {','.join(map(str, missing))}: "
                        "their NIC IPs are not configured")
    return {i: _valid_ip(found[i], f"{path} address_{i}") for i in ids}


def device_ips(ids: Sequence[int], hccn_conf: Optional[str] = None) -> Dict[int, str]:
    """Physical id -> device NIC IP: from `hccn_tool` when on PATH (live state), else from hccn.conf."""
    tool = shutil.which("hccn_tool")
    if tool:
        if hccn_conf:
            print(f"note: using {tool}; --hccn_conf {hccn_conf} is only read when hccn_tool is not on PATH",
                  file=sys.stderr)
        return _ips_from_hccn_tool(tool, ids)
    path = Path(hccn_conf or DEFAULT_HCCN_CONF)
    if not path.is_file():
        if hccn_conf:
            raise HcclError(f"no hccn_tool on PATH and --hccn_conf {path} not found")
        raise HcclError(f"no hccn_tool on PATH and {path} not found: this does not look like an Ascend host; "
                        "pass --hccn_conf")
    return _ips_from_hccn_conf(path, ids)


def server_ip(explicit: Optional[str]) -> str:
    if explicit:
        return _valid_ip(explicit, "--server_ip")
    host = socket.gethostname()
    try:
        ip = socket.gethostbyname(host)
    except OSError as e:
        raise HcclError(f"cannot resolve hostname {host!r} ({e}); pass --server_ip") from None
    if ip.startswith("127."):  # typical in containers: /etc/hosts maps the hostname to loopback
        raise HcclError(f"hostname {host!r} resolves to the loopback address {ip}; "
                        "pass --server_ip <this server's IP on the cluster network>")
    return ip


def rank_table(servers: Sequence[Tuple[str, Sequence[Tuple[int, str]]]]) -> dict:
    """[(server_id, [(physical id, device ip), ...]), ...] -> rank table; rank ids count up in that order."""
    server_list, rank = [], 0
    for sid, devices in servers:
        entries = []
        for dev_id, ip in devices:
            entries.append({"device_id": str(dev_id), "device_ip": ip, "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": sid, "device": entries, "host_nic_ip": "reserve"})
    return {"version": "1.0", "server_count": str(len(server_list)), "server_list": server_list,
            "status": "completed"}


def write_table(table: dict, path: Path, force: bool) -> Path:
    """The rank table as JSON in `path` (atomically; an existing file only with force)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path, force)
        write_json_atomic(path, table, indent=4, mode=UMASK)  # as the path.write_text it replaces
    except OSError as e:
        raise HcclError(f"cannot write {path}: {e.strerror}") from None
    print(f"Completed: hccl file was saved in {path.resolve()}")
    return path


def make_server_table(device_num: str, visible_devices: str, server: Optional[str], hccn_conf: Optional[str],
                      output_dir: str, force: bool) -> Path:
    visible = parse_visible_devices(visible_devices)
    first, last = parse_device_range(device_num, len(visible))
    ids = visible[first:last]
    check_chip_groups(ids)
    sid = server_ip(server)  # before the IP lookup: a cheap check that fails fast
    ips = device_ips(ids, hccn_conf)
    table = rank_table([(sid, [(i, ips[i]) for i in ids])])
    name = f"hccl_{len(ids)}p_{''.join(map(str, ids))}_{sid}.json"
    return write_table(table, Path(output_dir) / name, force)


def _read_servers(path: str) -> List[Tuple[str, List[Tuple[str, str]]]]:
    check_file(path, "rank table", error=HcclError)   # a FIFO would block the read forever
    try:
        table = json.loads(Path(path).read_text())
        servers = [(s["server_id"], [(d["device_id"], d["device_ip"]) for d in s["device"]])
                   for s in table["server_list"]]
    except OSError as e:
        raise HcclError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise HcclError(f"{path} is not a rank table (expected server_list[].server_id/device[])") from None
    if not servers or not all(devs for _, devs in servers):
        raise HcclError(f"{path} has no servers or a server without devices")
    for sid, devs in servers:   # what merge then puts together must be able to work together
        _valid_ip(str(sid), f"{path} server_id")
        ids = [str(d) for d, _ in devs]
        dup = sorted({d for d in ids if ids.count(d) > 1})
        if dup:
            raise HcclError(f"{path}: server {sid} lists device_id {', '.join(dup)} more than once")
        for d, ip in devs:
            _valid_ip(str(ip), f"{path} server {sid} device {d} device_ip")
    return servers


def merge_tables(paths: Sequence[str], output_dir: str, force: bool) -> Path:
    """Per-server tables -> one table; servers in file order, rank ids renumbered 0..N-1."""
    if len(paths) < 2:
        raise HcclError("merge needs at least two rank tables")
    servers = [s for p in paths for s in _read_servers(p)]
    ids = [sid for sid, _ in servers]
    dup = sorted({sid for sid in ids if ids.count(sid) > 1})
    if dup:
        raise HcclError(f"server_id {', '.join(dup)} appears in more than one table")
    ips = [ip for _, devs in servers for _, ip in devs]
    dup = sorted({ip for ip in ips if ips.count(ip) > 1})
    if dup:
        raise HcclError(f"device_ip {', '.join(dup)} appears more than once across the tables: two devices cannot "
                        "share a NIC address")
    table = rank_table(servers)
    n = sum(len(devs) for _, devs in servers)
    out = Path(output_dir) / f"hccl_{len(servers)}s_{n}p.json"
    check_not_an_input([out], {"rank table": list(paths)})
    return write_table(table, out, force)


def _parsers() -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    one = argparse.ArgumentParser(
        prog="hccl_tools.py", description="Write this server's HCCL rank table hccl_<N>p_<ids>_<server_ip>.json. "
        "To combine per-server tables: hccl_tools.py merge A.json B.json ...")
    one.add_argument("--device_num", default="[0,8)", help="half-open range of visible-device indices (default [0,8))")
    one.add_argument("--visible_devices", default="0,1,2,3,4,5,6,7",
                     help="physical device ids seen by this host/container; --device_num indexes into this list")
    one.add_argument("--server_ip", help="this server's IP (default: resolve the hostname; loopback is refused)")
    one.add_argument("--hccn_conf", help=f"device NIC IPs file, read when hccn_tool is not on PATH "
                                         f"(default {DEFAULT_HCCN_CONF})")
    one.add_argument("--output_dir", default=".", help="where to write the table (default: current directory)")
    one.add_argument("--force", action="store_true", help="overwrite an existing table")
    merge = argparse.ArgumentParser(prog="hccl_tools.py merge",
                                    description="Merge per-server rank tables into hccl_<S>s_<N>p.json "
                                                "(servers in the given order, rank ids renumbered)")
    merge.add_argument("tables", nargs="+", help="per-server rank tables, in rank order")
    merge.add_argument("--output_dir", default=".", help="where to write the table (default: current directory)")
    merge.add_argument("--force", action="store_true", help="overwrite an existing table")
    return one, merge


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    one, merge = _parsers()
    try:
        if argv[:1] == ["merge"]:
            a = merge.parse_args(argv[1:])
            merge_tables(a.tables, a.output_dir, a.force)
        else:
            a = one.parse_args(argv)
            make_server_table(a.device_num, a.visible_devices, a.server_ip, a.hccn_conf, a.output_dir, a.force)
    except SolovError as e:  # HcclError, and the output checks of solov2.files
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # as every other command (cli_main, which needs OpenCV: not on a bare host)
        print("interrupted", file=sys.stderr)
        return 130
    return 0
