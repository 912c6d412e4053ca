"""`renderq demo --cluster`: the demo farm as a cluster on this machine. A throwaway PostgreSQL and SeaweedFS (an
S3-compatible object store), three coordinators sharing them, and workers given the three addresses as one
comma-separated list; everything stops, and the temporary folders go, at the end or on Ctrl-C (renderq/demo.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from renderq import demo
from renderq.cli_common import EXIT_FAILED, EXIT_USAGE
from renderq.local_servers import Postgres, SeaweedFS, ServerError, missing_parts
from renderq.http_client import CoordinatorClient
from renderq.ports import free_port

CLUSTER_COORDINATORS = 3
# The key prefix of the farm's files in the demo's bucket.
BLOB_PREFIX = "farm"
MAX_PORT = 65535


def run(args: argparse.Namespace) -> int:
    """Run the cluster demo; returns the exit status (0 when every frame rendered)."""
    if args.port and args.port + CLUSTER_COORDINATORS - 1 > MAX_PORT:
        print(f"renderq: --port {args.port} leaves no room for {CLUSTER_COORDINATORS} coordinators (the last port is "
              f"{MAX_PORT})", file=sys.stderr)
        return EXIT_USAGE
    missing = missing_parts()
    if missing:
        print("renderq: the cluster demo needs " + "; ".join(missing)
              + " (bash scripts/demo.sh --cluster installs them)", file=sys.stderr)
        return EXIT_FAILED
    return demo.run(args, start_cluster)


def coordinator_ports(first: int) -> list[int]:
    """The coordinators' ports: `first` and the ones after it (run() checks they exist), else free ones."""
    if first:
        return [first + index for index in range(CLUSTER_COORDINATORS)]
    ports: list[int] = []
    while len(ports) < CLUSTER_COORDINATORS:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def start_cluster(args: argparse.Namespace, scratch: str, farm: demo.DemoFarm) -> None:
    """Start PostgreSQL, SeaweedFS and the coordinators on them into `farm` (their stops go on farm.servers)."""
    ports = coordinator_ports(args.port)
    print(f"starting PostgreSQL, SeaweedFS, {CLUSTER_COORDINATORS} coordinators sharing them and {args.workers} "
          f"worker(s); scratch folder {scratch}")
    store = SeaweedFS(os.path.join(scratch, "seaweedfs"))
    farm.servers.callback(store.stop)
    postgres = Postgres(logs_dir=scratch)
    farm.servers.callback(postgres.stop)
    try:
        store.launch()  # weed takes some seconds to answer: PostgreSQL starts meanwhile
        postgres.start()
        store.wait_ready()
    except ServerError as error:
        raise demo.DemoError(str(error)) from error
    print(f"PostgreSQL: {postgres.url} (folder {postgres.folder})")
    print(f"SeaweedFS: S3 at {store.endpoint}, bucket {store.bucket}")

    urls = []
    for index, port in enumerate(ports, start=1):
        url = f"http://127.0.0.1:{port}"
        urls.append(url)
        # Each has its own data dir (its copy of the farm's tokens, its temporary files); the farm's state is in
        # the database and its files in the bucket. The store's key goes in the environment, never on a command line.
        farm.coordinators.append(demo.start_child(
            f"coordinator {index}",
            ["coordinator", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", os.path.join(scratch, f"coordinator-{index}"), "--database", postgres.url,
             "--blob-store", f"s3://{store.bucket}/{BLOB_PREFIX}", "--s3-endpoint", store.endpoint],
            os.path.join(scratch, f"coordinator-{index}.log"),
            env=store.credentials_env(),
        ))
    for url, coordinator in zip(urls, farm.coordinators, strict=True):
        demo.wait_for_coordinator(CoordinatorClient(url, timeout=30.0), coordinator)

    # The farm's tokens are the same on every coordinator (they share them through the database).
    data_dir = os.path.join(scratch, "coordinator-1")
    farm.address = ",".join(urls)
    farm.token_file = os.path.join(data_dir, "worker_token")
    with open(os.path.join(data_dir, "admin_token"), encoding="utf-8") as handle:
        farm.admin_token = handle.read().strip()
    print("status pages (log in with the admin token; each shows the whole farm):")
    for url in urls:
        print(f"  {url}/")
    print(f"admin token: {farm.admin_token}")
    print(f"workers and the submit use all three: --coordinator {farm.address}")
