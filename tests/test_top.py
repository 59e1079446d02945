"""`hostcollector top`: its frames from real API answers, and the program itself in tmux.

The documents come from the daemon's own app (build_app, the real views and JSON) serving
snapshots built from the lab recording; the second snapshot's counters grow by known amounts,
so every rate on screen is known exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from hostcollector import cli
from hostcollector import tls as server_tls
from hostcollector.app import build_app
from hostcollector.attribution import attribute_gpus, attribute_vfs
from hostcollector.collector import Collector, Exposition
from hostcollector.config import AuthConfig, Config, ListenConfig, ServerTlsConfig
from hostcollector.model import AttributedVM, GpuStats, Snapshot, SourceStatus, VfStats, VgpuStats
from hostcollector.top import client as top_client
from hostcollector.top import documents as top_documents
from hostcollector.top import layout as top_layout
from hostcollector.top import rows as top_rows
from hostcollector.top import screen as top_screen
from tests.labkit import ACME, GLOBEX, LAB_VMS, free_port, require_lab, run_daemon, wait_until
from tests.pki import make_ca, make_cert
from tests.replay import RecordedLibvirt
from tests.served import serve
from tests.snapshots import LAB_ATTRIBUTION, TAKEN_AT, snapshot_from_raw

HOSTCOLLECTOR = str(Path(sys.executable).parent / "hostcollector")
MiB = 1024 * 1024
VM_DT = 2.0  # seconds between the two samples of each VM (but hc-lab-b1, see below)
VF_DT = 4.0  # between the sriov source's two polls
SNAPSHOT_DT = 3.0  # between the two snapshots: used by no rate
VF_POLLED_AT = TAKEN_AT - 5
ACME_TOKEN = "acme-top-token-0123456789"
NAMES = ["hc-lab-a1", "hc-lab-b1", "hc-lab-c1", "hc-lab-orphan"]
UUIDS = {vm["name"]: vm["uuid"] for vm in LAB_VMS}


# --- two snapshots with known differences ---------------------------------------------------


def grown(
    vm: AttributedVM, dt: float, cpu: float, read: int, write: int, rx: int, tx: int
) -> AttributedVM:
    """The VM sampled `dt` later with its counters grown by these amounts (negative: reset)."""
    s = vm.stats
    assert s.cpu_time_seconds is not None and len(s.blocks) == len(s.interfaces) == 1
    (block,), (nic,) = s.blocks, s.interfaces
    assert None not in (block.read_bytes, block.write_bytes, nic.receive_bytes, nic.transmit_bytes)
    stats = dataclasses.replace(
        s,
        cpu_time_seconds=s.cpu_time_seconds + cpu,
        blocks=(
            dataclasses.replace(
                block,
                read_bytes=block.read_bytes + read,  # type: ignore[operator]
                write_bytes=block.write_bytes + write,  # type: ignore[operator]
            ),
        ),
        interfaces=(
            dataclasses.replace(
                nic,
                receive_bytes=nic.receive_bytes + rx,  # type: ignore[operator]
                transmit_bytes=nic.transmit_bytes + tx,  # type: ignore[operator]
            ),
        ),
    )
    assert vm.sampled_at is not None
    return dataclasses.replace(
        vm, stats=stats, sampled_at=vm.sampled_at + dt, sample_age_seconds=1.75, quarantined=False
    )


def gpus(vms: tuple[AttributedVM, ...]) -> tuple[GpuStats, ...]:
    """hc-lab-a1 holds a whole GPU at 40 %, hc-lab-c1 one passed through (vfio: utilization
    unknown); vGPUs on a shared A40: c1 at 90 %, b1 two at 10 and 30 %, orphan at 25 %."""
    vgpus = (
        VgpuStats(1, UUIDS["hc-lab-c1"], "uuid", sm_utilization_ratio=0.90),
        VgpuStats(2, UUIDS["hc-lab-b1"], "uuid", sm_utilization_ratio=0.10),
        VgpuStats(3, UUIDS["hc-lab-b1"], "uuid", sm_utilization_ratio=0.30),
        VgpuStats(4, UUIDS["hc-lab-orphan"], "uuid", sm_utilization_ratio=0.25),
    )
    return (
        GpuStats("0000:41:00.0", True, "GPU-41", "NVIDIA A100", gpu_utilization_ratio=0.40),
        GpuStats("0000:c1:00.0", False),
        GpuStats(
            "0000:17:00.0", True, "GPU-17", "NVIDIA A40", gpu_utilization_ratio=0.55, vgpus=vgpus
        ),
    )


def vfs(grow: bool) -> tuple[VfStats, ...]:
    """VF 0 on hc-lab-a1, VF 1 on the orphan, VF 2 on no VM (counted nowhere)."""
    rx = (4 * MiB, 8 * MiB, 64 * MiB) if grow else (0, 0, 0)
    tx = (1 * MiB, 0, 64 * MiB) if grow else (0, 0, 0)
    return tuple(
        VfStats(
            "enp59s0f0",
            i,
            f"0000:3b:02.{i}",
            "netlink",
            receive_bytes=10**9 + rx[i],
            transmit_bytes=2 * 10**9 + tx[i],
        )
        for i in range(3)
    )


def with_devices(base: Snapshot, vms: tuple[AttributedVM, ...], second: bool) -> Snapshot:
    pci = {
        UUIDS["hc-lab-a1"]: ("0000:41:00.0", "0000:3b:02.0"),
        UUIDS["hc-lab-c1"]: ("0000:c1:00.0",),
        UUIDS["hc-lab-orphan"]: ("0000:3b:02.1",),
    }
    sriov = SourceStatus("sriov", True, 2 if second else 1, 0.01,
                         VF_POLLED_AT + (VF_DT if second else 0), None)  # fmt: skip
    return dataclasses.replace(
        base,
        taken_at=base.taken_at + (SNAPSHOT_DT if second else 0),
        vms=vms,
        sources=(*base.sources, sriov),
        vfs=attribute_vfs(vfs(grow=second), pci, vms),
        gpus=attribute_gpus(gpus(vms), pci, {}, vms),
        nvml_available=True,
    )


def two_snapshots() -> tuple[Snapshot, Snapshot]:
    base = snapshot_from_raw()
    first = with_devices(base, base.vms, second=False)
    by_name = {vm.stats.name: vm for vm in base.vms}
    later = (
        grown(by_name["hc-lab-a1"], VM_DT, 2.5, 2 * MiB, 1 * MiB, 400 * 1024, 2048),
        # quarantined in the first snapshot with a 30 s old sample: 32 s between its samples
        grown(by_name["hc-lab-b1"], 32.0, 3.2, 32 * 1024, 0, 32 * MiB, 0),
        grown(by_name["hc-lab-c1"], VM_DT, 1.0, 0, 4 * MiB, 200 * 1024, 0),
        # restarted: every counter lower than before
        grown(by_name["hc-lab-orphan"], VM_DT, -7.0, -5 * MiB, -5 * MiB, -4000, -2000),
    )
    return first, with_devices(base, later, second=True)


@pytest.fixture(scope="module")
def documents() -> tuple[top_documents.Documents, top_documents.Documents]:
    """The two snapshots as top reads them: over HTTP from the daemon's app."""
    first, second = two_snapshots()
    config = Config(attribution=LAB_ATTRIBUTION)
    collector = Collector(config, sources={})
    collector.exposition = Exposition(first)
    with serve(build_app(config, collector)) as url:
        client = top_client.make_client(url)
        before = top_client.fetch(client)
        collector.exposition = Exposition(second)
        return before, top_client.fetch(client)


def render(
    docs: tuple[top_documents.Documents, ...], width: int = 200, **view: str | bool
) -> list[str]:
    return top_layout.frame_from(
        docs, top_rows.View(**view), width, url="http://hv1:9730", now=TAKEN_AT
    )  # type: ignore[arg-type]


def table(lines: list[str]) -> list[dict[str, str]]:
    """The table under the blank line, each row by column title (only NOTE has spaces)."""
    start = lines.index("") + 1
    titles = lines[start].split()
    return [
        dict(zip(titles, line.split(None, len(titles) - 1), strict=False))
        for line in lines[start + 1 :]
    ]


def column(lines: list[str], title: str) -> list[str]:
    return [row[title] for row in table(lines)]


# --- frames ---------------------------------------------------------------------------------


def test_vm_rates_are_deltas_over_each_vms_own_sample_times(
    documents: tuple[top_documents.Documents, top_documents.Documents],
) -> None:
    rows = {row["NAME"]: row for row in table(render(documents))}
    a1 = rows["hc-lab-a1"]
    assert a1 == {
        "NAME": "hc-lab-a1",
        "TENANT": ACME,
        "STATE": "running",
        "CPU": "1.25",  # 2.5 s of CPU in 2 s
        "VCPU": "2",
        "MEM": "256M",
        "RSS": "239M",
        "RD/s": "1.0M",
        "WR/s": "512K",
        "RX/s": "200K",
        "TX/s": "1.0K",
        "GPU": "1",
        "GPU%": "40%",
        "VFRX/s": "1.0M",  # VF counters over the sriov source's 4 s, not the VMs' 2 s
        "VFTX/s": "256K",
    }
    # b1's samples are 32 s apart (the first was quarantined), whatever the snapshots' times
    b1 = rows["hc-lab-b1"]
    assert (b1["CPU"], b1["RD/s"], b1["WR/s"], b1["RX/s"], b1["TX/s"]) == (
        "0.10",
        "1.0K",
        "0",
        "1.0M",
        "0",
    )
    assert (b1["GPU"], b1["GPU%"], b1["VFRX/s"]) == ("2", "20%", "-")
    c1 = rows["hc-lab-c1"]
    assert (c1["CPU"], c1["RD/s"], c1["WR/s"], c1["RX/s"]) == ("0.50", "0", "2.0M", "100K")
    assert (c1["GPU"], c1["GPU%"]) == ("2", "90%")  # the vfio GPU counts, its unknown use not
    assert c1["TENANT"] == GLOBEX


def test_a_counter_that_went_backwards_or_a_first_sample_shows_a_dash(
    documents: tuple[top_documents.Documents, top_documents.Documents],
) -> None:
    orphan = next(r for r in table(render(documents)) if r["NAME"] == "hc-lab-orphan")
    assert [orphan[c] for c in ("CPU", "RD/s", "WR/s", "RX/s", "TX/s")] == ["-"] * 5
    assert orphan["TENANT"] == "(none)"
    assert orphan["VFRX/s"] == "2.0M"  # its VF counted on through the restart
    assert (orphan["GPU"], orphan["GPU%"]) == ("1", "25%")
    for row in table(render(documents[:1])):  # one document: no rate anywhere yet
        assert [row[c] for c in ("CPU", "RD/s", "WR/s", "RX/s", "TX/s", "VFRX/s")] == ["-"] * 6
    # the same document again (the daemon has not polled since): still no rate, no zero
    assert column(render((documents[0], documents[0])), "CPU") == ["-"] * 4


def test_rates_survive_refreshes_between_the_daemons_polls(
    documents: tuple[top_documents.Documents, top_documents.Documents],
) -> None:
    first, second = documents
    again = dataclasses.replace(second, fetched_at=second.fetched_at + 1)
    assert render((first, second, again)) == render((first, second))


@pytest.mark.parametrize(
    ("sort", "reverse", "order"),
    [
        ("cpu", False, ["hc-lab-a1", "hc-lab-c1", "hc-lab-b1", "hc-lab-orphan"]),
        ("cpu", True, ["hc-lab-orphan", "hc-lab-b1", "hc-lab-c1", "hc-lab-a1"]),
        ("mem", False, ["hc-lab-c1", "hc-lab-b1", "hc-lab-a1", "hc-lab-orphan"]),
        ("disk", False, ["hc-lab-c1", "hc-lab-a1", "hc-lab-b1", "hc-lab-orphan"]),
        ("net", False, ["hc-lab-b1", "hc-lab-a1", "hc-lab-c1", "hc-lab-orphan"]),
        ("gpu", False, ["hc-lab-c1", "hc-lab-a1", "hc-lab-orphan", "hc-lab-b1"]),
        ("vf", False, ["hc-lab-orphan", "hc-lab-a1", "hc-lab-b1", "hc-lab-c1"]),
        ("name", False, ["hc-lab-a1", "hc-lab-b1", "hc-lab-c1", "hc-lab-orphan"]),
        ("name", True, ["hc-lab-orphan", "hc-lab-c1", "hc-lab-b1", "hc-lab-a1"]),
    ],
)
def test_sort_orders(
    documents: tuple[top_documents.Documents, top_documents.Documents],
    sort: str,
    reverse: bool,
    order: list[str],
) -> None:
    lines = render(documents, sort=sort, reverse=reverse)
    assert column(lines, "NAME") == order
    direction = "ascending" if (sort == "name") != reverse else "descending"
    assert f"sort: {sort} {direction}" in lines[0]


def test_tenant_view_sums_its_vms(
    documents: tuple[top_documents.Documents, top_documents.Documents],
) -> None:
    rows = table(render(documents, tenants=True))
    assert [r["TENANT"] for r in rows] == [ACME, GLOBEX, "(none)"]  # by CPU: 1.25, 0.60, -
    acme, globex, none = rows
    assert (acme["VMS"], acme["CPU"], acme["VFRX/s"], acme["GPU%"]) == ("1", "1.25", "1.0M", "40%")
    assert globex == {
        "TENANT": GLOBEX,
        "VMS": "2",
        "CPU": "0.60",  # 0.10 + 0.50
        "VCPU": "4",
        "MEM": "512M",
        "RSS": "478M",
        "RD/s": "1.0K",
        "WR/s": "2.0M",
        "RX/s": "1.1M",  # 1 MiB/s + 100 KiB/s
        "TX/s": "0",
        "GPU": "4",  # c1's two, b1's two vGPUs
        "GPU%": "43%",  # mean of 90, 10, 30 (the vfio GPU's use is unknown)
        "VFRX/s": "-",
        "VFTX/s": "-",
    }
    assert (none["VMS"], none["CPU"], none["VFRX/s"], none["GPU"]) == ("1", "-", "2.0M", "1")
    assert "view: tenants" in render(documents, tenants=True)[0]


def test_quarantined_and_stale_vms_are_marked(
    documents: tuple[top_documents.Documents, top_documents.Documents],
) -> None:
    rows = {row["NAME"]: row for row in table(render(documents[:1]))}
    assert rows["hc-lab-b1"]["NOTE"] == "quarantined 32s old"
    assert "NOTE" not in rows["hc-lab-a1"]
    tenants = {row["TENANT"]: row for row in table(render(documents[:1], tenants=True))}
    assert tenants[GLOBEX]["NOTE"] == "1 quarantined" and "NOTE" not in tenants[ACME]
    stale = dataclasses.replace(
        documents[1], vms=tuple(dataclasses.replace(vm, sample_age=95.0) for vm in documents[1].vms)
    )
    assert {row["NOTE"] for row in table(render((documents[0], stale)))} == {"95s old"}


def test_header_lines(documents: tuple[top_documents.Documents, top_documents.Documents]) -> None:
    lines = render(documents)
    assert lines[0].startswith("hostcollector top  http://hv1:9730  ")
    assert "4 VMs  2 tenants  3 GPUs  3 VFs" in lines[0]
    assert lines[1].startswith("sources: libvirt up ") and ", sriov up " in lines[1]
    assert lines[2] == ""
    assert lines[3].split()[:3] == ["NAME", "TENANT", "STATE"]


@pytest.mark.parametrize("width", [0, 1, 12, 40, 79])
@pytest.mark.parametrize("tenants", [False, True])
def test_narrow_terminals_cut_every_line(
    documents: tuple[top_documents.Documents, top_documents.Documents], width: int, tenants: bool
) -> None:
    lines = render(documents, width=width, tenants=tenants)
    assert all(len(line) <= width for line in lines)
    if width >= 40:
        # tenant IDs shortened so that the figures still show
        first = table(lines)[0]
        assert first["CPU"] == "1.25" and len(first["TENANT"]) == 8


def test_a_failed_fetch_keeps_the_last_data_on_screen(
    documents: tuple[top_documents.Documents, top_documents.Documents],
) -> None:
    live = top_screen.Live(top_client.make_client("http://hv1:9730"), top_rows.View())
    for found in documents:
        live.take(found)
    live.take("/api/v1/vms: [Errno 111] Connection refused")
    lines = live.lines(200)
    assert lines[2].startswith("error: /api/v1/vms: [Errno 111] Connection refused (showing data")
    assert column(lines, "CPU")[0] == "1.25"
    live.take(documents[1])
    assert not any(line.startswith("error:") for line in live.lines(200))
    waiting = top_screen.Live(top_client.make_client("http://hv1:9730"), top_rows.View())
    waiting.take("/api/v1/vms: timed out")
    assert waiting.lines(80)[-1] == "waiting for http://hv1:9730"


def test_keys() -> None:
    view = top_rows.View()
    assert top_rows.apply_key(view, "q") is None
    assert top_rows.apply_key(view, "t") == top_rows.View(tenants=True)
    assert top_rows.apply_key(view, "r") == top_rows.View(reverse=True)
    assert top_rows.apply_key(top_rows.View(reverse=True), "m") == top_rows.View(sort="mem")
    sorts = {key: top_rows.apply_key(view, key) for key in "cmdngvN"}
    assert {key: v.sort for key, v in sorts.items() if v} == {
        "c": "cpu", "m": "mem", "d": "disk", "n": "net", "g": "gpu", "v": "vf", "N": "name",
    }  # fmt: skip
    assert top_rows.apply_key(view, "x") == view


def test_units() -> None:
    cases = [(None, "-"), (0, "0"), (1023, "1023"), (1024, "1.0K"), (1536, "1.5K"),
             (10 * 1024, "10K"), (MiB, "1.0M"), (256 * MiB, "256M"), (5 * 1024**5, "5.0P")]  # fmt: skip
    assert [top_layout.human_bytes(value) for value, _ in cases] == [text for _, text in cases]
    assert [top_layout.age(s) for s in (None, 3.4, 150, 9000)] == ["never", "3s", "2m", "2h"]


# --- errors from the API ----------------------------------------------------------------------


def tokens_file(tmp_path: Path) -> Path:
    digest = hashlib.sha256(ACME_TOKEN.encode()).hexdigest()
    path = tmp_path / "tokens.yml"
    path.write_text(
        f"tokens:\n  - {{name: acme-portal, sha256: {digest}, scope: tenant, tenant: '{ACME}'}}\n"
    )
    return path


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    config = Config(attribution=LAB_ATTRIBUTION, auth=AuthConfig(str(tokens_file(tmp_path))))
    collector = Collector(config, sources={})
    collector.exposition = Exposition(two_snapshots()[0])
    with serve(build_app(config, collector)) as url:
        yield url


def test_a_tenants_token_sees_its_vms_and_no_sources(guarded: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(f"  {ACME_TOKEN}\n")
    documents = top_client.fetch(top_client.make_client(guarded, token_file=str(token)))
    assert documents.sources is None
    lines = top_layout.frame_from([documents], top_rows.View(), 200, url=guarded, now=TAKEN_AT)
    assert lines[1] == "sources: not visible to this token"
    assert column(lines, "NAME") == ["hc-lab-a1"]
    with pytest.raises(
        top_documents.FetchError, match="HTTP 401: an 'Authorization: Bearer <token>' header"
    ):
        top_client.fetch(top_client.make_client(guarded))


def test_refused_connections_and_answers_that_are_not_the_api() -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy error</html>", content_type="text/html")

    async def wrong_shape(request: web.Request) -> web.Response:
        return web.json_response(["not", "an", "envelope"])

    app = web.Application()
    app.router.add_get("/bad/api/v1/vms", garbage)
    for name in ("vms", "gpus", "vfs", "sources"):
        app.router.add_get(f"/shape/api/v1/{name}", wrong_shape)
    with serve(app) as url:
        with pytest.raises(top_documents.FetchError, match="/api/v1/vms: not JSON"):
            top_client.fetch(top_client.make_client(f"{url}/bad"))
        with pytest.raises(top_documents.FetchError, match="/api/v1/vms: expected a JSON object"):
            top_client.fetch(top_client.make_client(f"{url}/shape"))
        with pytest.raises(top_documents.FetchError, match="/api/v1/vms: HTTP 404: 404: Not Found"):
            top_client.fetch(top_client.make_client(url))
    # the server is gone now: the port refuses
    assert "Connection refused" in str(top_client.fetch_or_error(top_client.make_client(url)))


# --- the command ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded() -> Iterator[str]:
    """The daemon's app replaying the lab recording, as `hostcollector run` serves it."""
    config = Config(attribution=LAB_ATTRIBUTION)
    collector = Collector(config, sources={"libvirt": RecordedLibvirt()})
    with serve(build_app(config, collector)) as url:
        wait_until(lambda: collector.exposition.snapshot.vms, 10, "the first poll's snapshot")
        yield url


def test_once_prints_one_frame(recorded: str) -> None:
    result = subprocess.run(
        [HOSTCOLLECTOR, "top", "--url", recorded, "--interval", "0.1", "--once", "--sort", "name"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"hostcollector top  {recorded}  ")
    assert "4 VMs  2 tenants" in lines[0] and "sort: name ascending" in lines[0]
    assert lines[1].startswith("sources: libvirt up ")
    assert column(lines, "NAME") == NAMES
    assert column(lines, "TENANT") == [ACME, GLOBEX, GLOBEX, "(none)"]


def test_once_with_a_tenants_token_file(
    guarded: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text(ACME_TOKEN + "\n")
    argv = ["top", "--url", guarded, "--interval", "0.05", "--once", "--token-file", str(token)]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "sources: not visible to this token" in out and "hc-lab-a1" in out
    assert "hc-lab-b1" not in out and ACME_TOKEN not in out + err


def test_once_against_nothing_reports_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["top", "--url", url, "--interval", "0.05", "--once"]) == 1
    out, err = capsys.readouterr()
    assert "error: /api/v1/vms: [Errno 111] Connection refused" in out
    assert f"waiting for {url}" in out and err == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "localhost:9730"], "--url must be http://HOST:PORT"),
        (["--cert", "c.pem"], "--cert and --key go together"),
        (["--ca-file", "ca.pem"], "--ca-file, --cert and --key need an https:// URL"),
        (["--interval", "0"], "--interval must be > 0"),
        (["--token-file", "/nonexistent/token"], "cannot read the token file"),
    ],
)
def test_bad_options_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["top", "--once", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_sort_choices_are_tops() -> None:
    for sort in top_rows.SORTS:  # accepted by the parser, then the URL stops it
        assert cli.main(["top", "--sort", sort, "--url", "nope"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["top", "--sort", "colour"])


def test_https_with_a_client_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_ca(tmp_path)
    make_cert(tmp_path, "server", "hostcollector", server=True)
    make_cert(tmp_path, "client", "sre", server=False)
    settings = ServerTlsConfig(
        str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "ca.pem")
    )
    config = Config(attribution=LAB_ATTRIBUTION, listen=ListenConfig(tls=settings))
    collector = Collector(config, sources={})
    collector.exposition = Exposition(two_snapshots()[0])
    context = server_tls.ReloadingServerTls(settings).context
    with serve(build_app(config, collector), ssl_context=context) as url:
        base = [
            "top",
            "--url",
            url,
            "--interval",
            "0.05",
            "--once",
            "--ca-file",
            str(tmp_path / "ca.pem"),
        ]
        mine = ["--cert", str(tmp_path / "client.pem"), "--key", str(tmp_path / "client.key")]
        assert cli.main([*base, *mine]) == 0
        assert "hc-lab-orphan" in capsys.readouterr().out
        assert cli.main(base) == 1  # no client certificate: the handshake is refused
        assert "error: /api/v1/vms: " in capsys.readouterr().out


# --- the live view, in a real terminal --------------------------------------------------------


class Tmux:
    """A tmux server of our own (its own socket), so nothing else's sessions are touched."""

    def __init__(self) -> None:
        self.socket = f"hc-top-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=check,
        )

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top").stdout

    def wait_for(self, what: str, predicate: Callable[[str], bool]) -> str:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")

    def alive(self) -> bool:
        return self("has-session", "-t", "top", check=False).returncode == 0


def rows_of(screen: str) -> list[str]:
    """The first word of the table's lines: the first column's title, then its rows."""
    lines = screen.splitlines()
    start = lines.index("") + 1
    return [line.split()[0] for line in lines[start:] if line.strip()]


def test_live_view_in_tmux(recorded: str, tmp_path: Path) -> None:
    tmux = Tmux()
    status = tmp_path / "status"
    command = f"{shlex.quote(HOSTCOLLECTOR)} top --url {recorded} --interval 1; echo $? > {status}"
    try:
        tmux("new-session", "-d", "-s", "top", "-x", "160", "-y", "40", command)
        screen = tmux.wait_for(
            "the first frame", lambda s: "hc-lab-orphan" in s and "sources: libvirt up" in s
        )
        assert "sort: cpu descending  view: VMs" in screen and "keys: q quit" in screen
        assert rows_of(screen)[:1] == ["NAME"] and sorted(rows_of(screen)[1:]) == NAMES

        tmux("send-keys", "-t", "top", "N")
        screen = tmux.wait_for("name order", lambda s: "sort: name ascending" in s)
        assert rows_of(screen)[1:] == NAMES
        tmux("send-keys", "-t", "top", "r")
        screen = tmux.wait_for("reversed", lambda s: "sort: name descending" in s)
        assert rows_of(screen)[1:] == NAMES[::-1]

        tmux("send-keys", "-t", "top", "t")
        screen = tmux.wait_for("the tenant view", lambda s: "view: tenants" in s)
        assert rows_of(screen) == ["TENANT", ACME, GLOBEX, "(none)"]  # name descending
        assert (
            next(line for line in screen.splitlines() if line.startswith("TENANT")).split()[1]
            == "VMS"
        )

        tmux("resize-window", "-t", "top", "-x", "30", "-y", "5")
        tmux.wait_for(
            "a redraw at 30 columns",
            lambda s: max(map(len, s.splitlines())) <= 30 and "hostcollector top" in s,
        )
        assert tmux.alive()

        tmux("send-keys", "-t", "top", "q")
        wait_until(lambda: not tmux.alive(), 15, "top to quit on q")
        assert status.read_text().strip() == "0"
    finally:
        tmux("kill-server", check=False)


# --- against the real lab ---------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.slow
def test_once_against_the_lab_daemon(tmp_path: Path) -> None:
    require_lab()
    with run_daemon(tmp_path, interval=1.0) as daemon:
        result = subprocess.run(
            [HOSTCOLLECTOR, "top", "--url", daemon.url, "--interval", "2.5", "--once", "--sort", "name"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[1].startswith("sources: libvirt up ")
    rows = {row["NAME"]: row for row in table(lines)}
    assert set(NAMES) <= set(rows)
    assert rows["hc-lab-a1"]["TENANT"] == ACME and rows["hc-lab-orphan"]["TENANT"] == "(none)"
    for name in NAMES:
        row = rows[name]
        assert row["STATE"] == "running"
        # two polls apart: real rates; the guests write to disk and send packets all the time
        assert 0 <= float(row["CPU"]) <= float(row["VCPU"]), row
        assert row["WR/s"] != "-" and row["TX/s"] != "-", row
