"""benchmarks/machine_split.py: the categories of a system-wide perf recording (pure logic, on
`perf script -F comm,pid,ip,sym` text in the shape perf prints)."""
from __future__ import annotations

import math

import pytest

from benchmarks import machine_split as ms

AGENT = 4242


def _sample(comm: str, pid: int, *frames: str) -> str:
    """One sample as perf script prints it: header, then the stack leaf first."""
    lines = [f"{comm}  {pid} "]
    lines += [f"\tffffffff8{i:07x} {f}+0x1{i}" for i, f in enumerate(frames)]
    return "\n".join(lines) + "\n\n"


SEND_COPY = ("_copy_from_iter", "ip_generic_getfrag", "__ip_append_data", "udp_sendmsg",
             "__sys_sendmmsg", "do_syscall_64", "entry_SYSCALL_64_after_hwframe", "__sendmmsg")
WRITE_STACK = ("tcp_v4_rcv", "ip_local_deliver_finish", "process_backlog", "net_rx_action",
               "handle_softirqs", "do_softirq", "__local_bh_enable_ip", "tun_get_user",
               "tun_chr_write_iter", "do_writev", "do_syscall_64", "__GI___writev")
READ_REST = ("tun_do_read", "tun_chr_read_iter", "vfs_read", "ksys_read", "do_syscall_64", "read")
RECV_COPY = ("_copy_to_iter", "__skb_datagram_iter", "udp_recvmsg", "do_recvmmsg",
             "do_syscall_64", "__recvmmsg")


@pytest.mark.parametrize("frames, want", [
    (SEND_COPY, "agent UDP send: copy"),
    (WRITE_STACK, "agent TAP write: stack"),
    (READ_REST, "agent TAP read: rest"),
    (RECV_COPY, "agent UDP recv: copy"),
    (("__pyx_f_8fastpath_4csum_csum_add", "__pyx_f_8fastpath_3gso_gso_seg_header"),
     "agent fast path: checksum"),
    (("__pyx_f_8fastpath_3gro_gro_coalesce", "__pyx_f_8fastpath_6switch_6Switch__rx_batch"),
     "agent fast path: rest"),
    (("vx_csum_bulk_avx2", "[unknown]"), "agent fast path: checksum"),
    (("__memcmp_evex_movbe", "__pyx_f_8fastpath_3gro_gro_coalesce"), "agent fast path: rest"),
    (("__memcmp_evex_movbe", "[unknown]"), "agent other"),
    (("do_sched_yield", "do_syscall_64", "__sched_yield"), "agent other"),
])
def test_agent_samples(frames: tuple[str, ...], want: str) -> None:
    (comm, pid, stack), = ms.samples(_sample("python", AGENT, *frames).splitlines(True))
    assert (comm, pid) == ("python", AGENT)
    assert stack[0] == frames[0]                     # offsets stripped
    assert ms.categorize(comm, pid, stack, {AGENT}) == want


def test_apps_idle_other_and_unknown_pids() -> None:
    text = (_sample("iperf3", 7, "_copy_to_iter", "tcp_recvmsg", "__x64_sys_recvfrom")
            + _sample("iperf3", 7, "vxlan_rcv", "udp_queue_rcv_skb", "net_rx_action",
                      "handle_softirqs", "tcp_sendmsg")
            + _sample("iperf3", 7, "tcp_sendmsg_locked", "tcp_sendmsg")
            + _sample("swapper", 0, "pv_native_safe_halt", "default_idle")
            + _sample("kworker/0:1", 99, "process_one_work")
            # the same stack as an agent's send, but not an agent's pid: not agent time
            + _sample("python", 5, *SEND_COPY))
    got = [ms.categorize(c, p, s, {AGENT}) for c, p, s in ms.samples(text.splitlines(True))]
    assert got == ["apps: copy", "apps: stack", "apps: rest", "idle", "other", "other"]


def test_split_fractions_and_ns_per_kb() -> None:
    text = (_sample("python", AGENT, *SEND_COPY) * 3 + _sample("swapper", 0, "pv_native_safe_halt")
            + _sample("iperf3", 1, "tcp_sendmsg"))
    fr = ms.split(text.splitlines(True), {AGENT})
    assert fr["_samples"] == 5
    assert fr["agent UDP send: copy"] == pytest.approx(0.6)
    assert fr["idle"] == pytest.approx(0.2) and fr["apps: rest"] == pytest.approx(0.2)
    assert math.isclose(sum(v for k, v in fr.items() if k != "_samples"), 1.0)
    # 2 CPUs x 10 s, 0.6 of it for 1 GiB: 12 s / 1,048,576 KB
    per = ms.ns_per_kb(fr, 10, 1 << 30, cpus=2)
    assert per["agent UDP send: copy"] == pytest.approx(0.6 * 2 * 10 * 1e9 / (1 << 20))
    assert ms.ns_per_kb(fr, 10, 0, cpus=2) == {}
    table = ms.format_table({"kernel": fr, "vxtap": fr}, {"kernel": per, "vxtap": per})
    assert "agent UDP send: copy" in table and "busy (all but idle)" in table
    assert "agent TAP read: copy" not in table            # empty rows are left out


def test_bad_lines_do_not_crash() -> None:
    text = "garbage-without-pid\n\tdeadbeef\n\n\n\tffff x\nnot a header\n"
    got = list(ms.samples(text.splitlines(True)))
    assert got[0][1] == -1 and got[0][2] == ["deadbeef"]
    assert ms.split([], {AGENT})["_samples"] == 0


def test_system_prints_kernel_and_vxtap_side_by_side() -> None:
    """benchmarks.system's report of --perf: one table per test that has both variants."""
    from benchmarks import system
    fr = ms.split((_sample("python", AGENT, *SEND_COPY) + _sample("iperf3", 1, "x")).splitlines(
        True), {AGENT})
    split = {"fractions": fr, "seconds": 10, "bytes": 10 * 10**9 // 8,
             "ns_per_kb": ms.ns_per_kb(fr, 10, 10**9 // 8 * 10, cpus=2)}
    results = {"runs": [{"variant": "kernel", "test": "tcpN", "machine_split": split},
                        {"variant": "vxtap", "test": "tcpN", "machine_split": split},
                        {"variant": "vxtap", "test": "tcp1", "machine_split": split}]}
    text = system.machine_split_tables(results)
    assert text.startswith("Where the machine's time goes, tcpN")
    assert "kernel 1.00 Gbit/s, vxtap 1.00 Gbit/s" in text
    assert "tcp1" not in text                        # one variant only: no comparison
    assert "kernel %" in text and "vxtap ns/KB" in text
