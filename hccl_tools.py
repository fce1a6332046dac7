"""Write an Ascend HCCL rank table for this server, or merge per-server tables (see src/solov2/tools/hccl.py).

    python hccl_tools.py --device_num "[0,8)" [--visible_devices 0,...,7] [--server_ip IP] [--hccn_conf PATH]
    python hccl_tools.py merge hccl_8p_01234567_10.0.0.1.json hccl_8p_01234567_10.0.0.2.json
"""
import sys
from pathlib import Path

try:
    from solov2.tools.hccl import main
except ImportError:  # the table is often made on an Ascend host before the package is pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from solov2.tools.hccl import main

if __name__ == "__main__":
    sys.exit(main())
