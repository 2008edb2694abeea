"""A multi-node Ray cluster on this machine (ray.cluster_utils.Cluster), run in a child process
so that its environment (token authentication, each node's stage folder) is its own and not
the test process's, whose Ray reads its settings once, when first imported.

    python -m tests.cluster_process WORKERS STAGE_ROOT
        prints "address HOST:PORT" once every node is up, then reads commands on stdin:
        "remove N" (worker N, without warning: its processes are killed), "stop"
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from ray.cluster_utils import Cluster

    workers, stage_root = int(sys.argv[1]), sys.argv[2]
    store = 1 << 30  # room for 16 decoded windows, below which dub warns that a run crawls
    os.environ["DUB_STAGE_DIR"] = os.path.join(stage_root, "head")
    # the head node (the driver's) runs no task: every task and replica is on a worker
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": store // 2})
    nodes = []
    for index in range(workers):
        os.environ["DUB_STAGE_DIR"] = os.path.join(stage_root, f"worker{index}")  # the node inherits it
        nodes.append(cluster.add_node(num_cpus=2, object_store_memory=store))  # a replica + a decode task
    cluster.wait_for_nodes()
    print("address", cluster.address, flush=True)
    try:
        for line in sys.stdin:
            command = line.split()
            if command[:1] == ["remove"]:
                cluster.remove_node(nodes[int(command[1])], allow_graceful=False)
                print("removed", command[1], flush=True)
            elif command[:1] == ["stop"]:
                break
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
