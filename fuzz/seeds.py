#!/usr/bin/env python3
"""Writes the seed corpus of the wl_session fuzz target (format: see
wl-proxy/src/fuzzing.rs). Run from fuzz/: python3 seeds.py"""
import os, struct, tomllib

allow = sorted(tomllib.load(open("../wl-proxy/default-policy.toml", "rb"))["allow"])
name = {g: i + 1 for i, g in enumerate(allow)}


def msg(obj, op, *args):
    body = b""
    for a in args:
        if isinstance(a, str):
            b = a.encode() + b"\0"
            body += struct.pack("<I", len(b)) + b + b"\0" * (-len(b) % 4)
        elif isinstance(a, bytes):
            body += struct.pack("<I", len(a)) + a + b"\0" * (-len(a) % 4)
        else:
            body += struct.pack("<I", a & 0xFFFFFFFF)
    return struct.pack("<II", obj, ((8 + len(body)) << 16) | op) + body


def rec(direction, m, fds=0):
    return bytes([direction | (fds << 1)]) + struct.pack("<H", len(m)) + m


REQ, EV = 0, 1


def bind(g, v, id):
    return rec(REQ, msg(2, 0, name[g], g, v, id))


seeds = {}
# A window: compositor, xdg_wm_base, surface, xdg_surface, toplevel, title, app id, commit.
seeds["toplevel"] = b"".join([
    bind("wl_compositor", 4, 3), bind("xdg_wm_base", 2, 4),
    rec(REQ, msg(3, 0, 5)), rec(REQ, msg(4, 2, 6, 5)), rec(REQ, msg(6, 1, 7)),
    rec(REQ, msg(7, 2, "a title")), rec(REQ, msg(7, 3, "org.example")),
    rec(REQ, msg(5, 6)), rec(EV, msg(6, 0, 1)), rec(REQ, msg(6, 4, 1)),
    rec(EV, msg(7, 0, 800, 600, struct.pack("<II", 1, 4))),
])
# shm: pool with an fd, buffer, attach, damage, frame, destroy, delete_id.
seeds["shm"] = b"".join([
    bind("wl_compositor", 4, 3), bind("wl_shm", 1, 4),
    rec(REQ, msg(4, 0, 5, 4096), fds=1), rec(REQ, msg(5, 0, 6, 0, 32, 32, 128, 0)),
    rec(REQ, msg(3, 0, 7)), rec(REQ, msg(7, 1, 6, 0, 0)), rec(REQ, msg(7, 2, 0, 0, 32, 32)),
    rec(REQ, msg(7, 3, 8)), rec(REQ, msg(7, 6)), rec(EV, msg(8, 0, 1234)),
    rec(EV, msg(1, 1, 8)), rec(REQ, msg(5, 2, 8192)), rec(REQ, msg(5, 1)), rec(EV, msg(1, 1, 5)),
])
# Seat, data device, a server-created offer, keyboard enter with an array.
seeds["seat"] = b"".join([
    bind("wl_seat", 7, 3), bind("wl_data_device_manager", 3, 4), bind("wl_compositor", 4, 5),
    rec(EV, msg(3, 0, 3)), rec(EV, msg(3, 1, "seat0")), rec(REQ, msg(3, 1, 6)),
    rec(REQ, msg(4, 1, 7, 3)), rec(REQ, msg(5, 0, 8)),
    rec(EV, msg(7, 0, 0xFF000000)), rec(EV, msg(0xFF000000, 0, "text/plain")),
    rec(EV, msg(6, 1, 9, 8, struct.pack("<III", 30, 31, 32))),
    rec(REQ, msg(0xFF000000, 1, "text/plain"), fds=1),
])
# Registry traffic: globals (hidden and shown), global_remove, sync, errors.
seeds["registry"] = b"".join([
    rec(EV, msg(2, 0, 200, "zwlr_screencopy_manager_v1", 3)), rec(EV, msg(2, 0, 201, "wl_output", 4)),
    rec(REQ, msg(2, 0, 201, "wl_output", 3, 3)), rec(EV, msg(2, 1, 200)), rec(EV, msg(2, 1, 201)),
    rec(REQ, msg(1, 0, 4)), rec(EV, msg(4, 0, 7)), rec(EV, msg(1, 1, 4)),
    rec(REQ, msg(2, 0, 200, "zwlr_screencopy_manager_v1", 1, 5)),
])
# Malformed: bad size, split header, string without NUL.
seeds["malformed"] = b"".join([
    rec(REQ, msg(1, 0, 3)[:5]), rec(REQ, msg(1, 0, 3)[5:]),
    rec(REQ, struct.pack("<IIII", 2, (16 << 16), 4, 0x61616161)),
    rec(REQ, struct.pack("<II", 1, (6 << 16))),
])

os.makedirs("seeds/wl_session", exist_ok=True)
for k, v in seeds.items():
    open(f"seeds/wl_session/{k}", "wb").write(v)
print(len(seeds), "wl_session seeds")


# virtio_mmio: [flags] then records (op: bit0 write, bits1-2 log2 size; offset u16; value u32).
def reg(write, off, val=0, size=4):
    op = (1 if write else 0) | ({1: 0, 2: 1, 4: 2, 8: 3}[size] << 1)
    return bytes([op]) + struct.pack("<HI", off, val & 0xFFFFFFFF)


drv = b"\x00" + b"".join([
    reg(0, 0x000), reg(0, 0x004), reg(0, 0x008), reg(1, 0x070, 0), reg(1, 0x070, 1), reg(1, 0x070, 3),
    reg(1, 0x014, 0), reg(0, 0x010), reg(1, 0x014, 1), reg(0, 0x010),
    reg(1, 0x024, 0), reg(1, 0x020, 0xff), reg(1, 0x024, 1), reg(1, 0x020, 1), reg(1, 0x070, 11), reg(0, 0x070),
    reg(1, 0x030, 0), reg(0, 0x034), reg(1, 0x038, 16), reg(1, 0x080, 0x1000), reg(1, 0x084, 0),
    reg(1, 0x090, 0x2000), reg(1, 0x094, 0), reg(1, 0x0a0, 0x3000), reg(1, 0x0a4, 0), reg(1, 0x044, 1),
    reg(1, 0x030, 1), reg(1, 0x038, 256), reg(1, 0x044, 1), reg(1, 0x070, 15), reg(1, 0x050, 0),
    reg(0, 0x060), reg(1, 0x064, 1), reg(0, 0x100, 0, 1), reg(1, 0x104, 7, 2), reg(0, 0x0fc),
    reg(1, 0x0ac, 0), reg(0, 0x0b0), reg(1, 0x070, 0),
])
os.makedirs("seeds/virtio_mmio", exist_ok=True)
open("seeds/virtio_mmio/driver", "wb").write(drv)
open("seeds/virtio_mmio/refused", "wb").write(b"\x80" + drv[1:])

# virtio_blk: guest memory image; descriptor table at 0, avail ring at 0x1000.
def blk(chains):
    g = bytearray(0x4000)
    descs = []
    for c in chains:
        descs.extend(c)
    for i, (addr, ln, flags) in enumerate(descs):
        nxt = i + 1 if flags & 1 else 0
        struct.pack_into("<QIHH", g, i * 16, addr, ln, flags, nxt)
    heads, i = [], 0
    for c in chains:
        heads.append(i)
        i += len(c)
    struct.pack_into("<HH", g, 0x1000, 0, len(heads))
    for j, h in enumerate(heads):
        struct.pack_into("<H", g, 0x1004 + 2 * j, h)
    return g


def hdr(g, at, ty, sector):
    struct.pack_into("<IIQ", g, at, ty, 0, sector)
    return g


N, W = 1, 2
g = blk([[(0x3000, 16, N), (0x3100, 512, N | W), (0x3f00, 1, W)],
         [(0x3010, 16, N), (0x3300, 1024, N), (0x3f01, 1, W)],
         [(0x3020, 16, N), (0x3f02, 1, W)],
         [(0x3030, 16, N), (0x3400, 20, N | W), (0x3f03, 1, W)]])
hdr(g, 0x3000, 0, 0); hdr(g, 0x3010, 1, 8); hdr(g, 0x3020, 4, 0); hdr(g, 0x3030, 8, 0)
os.makedirs("seeds/virtio_blk", exist_ok=True)
open("seeds/virtio_blk/in_out_flush_getid", "wb").write(bytes(g))
g = blk([[(0x3000, 16, N), (0x3100, 16, N), (0x3f00, 1, W)], [(0x3010, 16, N), (0x3200, 16, N), (0x3f01, 1, W)]])
hdr(g, 0x3000, 11, 0); hdr(g, 0x3010, 13, 0)
struct.pack_into("<QII", g, 0x3100, 0, 8, 0); struct.pack_into("<QII", g, 0x3200, 8, 8, 1)
open("seeds/virtio_blk/discard_write_zeroes", "wb").write(bytes(g))

# virtio_vsock: tx queue as for blk, rx queue at 0x4000 (avail 0x5000).
def vsock(pkts, rx_bufs=4):
    g = bytearray(0x8000)
    for i, (hdr, payload) in enumerate(pkts):
        at = 0x3000 + i * 0x100
        g[at:at + 44] = hdr
        g[at + 44:at + 44 + len(payload)] = payload
        struct.pack_into("<QIHH", g, i * 16, at, 44 + len(payload), 0, 0)
        struct.pack_into("<H", g, 0x1004 + 2 * i, i)
    struct.pack_into("<HH", g, 0x1000, 0, len(pkts))
    for i in range(rx_bufs):
        struct.pack_into("<QIHH", g, 0x4000 + i * 16, 0x6000 + i * 0x400, 0x400, 2, 0)
        struct.pack_into("<H", g, 0x5004 + 2 * i, i)
    struct.pack_into("<HH", g, 0x5000, 0, rx_bufs)
    return bytes(g)


def vhdr(op, sport, dport, ln=0, flags=0, fwd=0):
    return struct.pack("<QQIIIHHIII", 3, 2, sport, dport, ln, 1, op, flags, 65536, fwd)


os.makedirs("seeds/virtio_vsock", exist_ok=True)
open("seeds/virtio_vsock/request_rw_shutdown", "wb").write(vsock([
    (vhdr(1, 1000, 7), b""), (vhdr(5, 1000, 7, 5), b"hello"), (vhdr(6, 1000, 7), b""),
    (vhdr(7, 1000, 7), b""), (vhdr(4, 1000, 7, 0, 3), b""), (vhdr(3, 1000, 7), b"")]))
# A framed stream to port 1026 (whole frame, a frame in two packets, then a
# length out of range) beside a plain one to port 8; both ports listen.
fr = lambda n, fill: struct.pack(">I", n) + bytes([fill]) * n
part = fr(100, 0xab)
open("seeds/virtio_vsock/framed_and_plain", "wb").write(vsock([
    (vhdr(1, 1000, 1026), b""), (vhdr(1, 2000, 8), b""),
    (vhdr(5, 1000, 1026, 18 + 54), fr(14, 0x11) + part[:54]),
    (vhdr(5, 1000, 1026, 50 + 4), part[54:] + b"\xff\xff\xff\xff"),
    (vhdr(5, 2000, 8, 5), b"hello")], rx_bufs=8))

# acpi: cpus, MiB, slots.
# virtio_fs: a selector byte (odd: read-only share), then guest memory as for blk.
def fuse(g, at, op, nodeid, body, unique):
    struct.pack_into("<IIQQIIII", g, at, 40 + len(body), op, unique, nodeid, 0, 0, 0, 0)
    g[at + 40:at + 40 + len(body)] = body
    return 40 + len(body)

def fs_seed(reqs):
    chains, bodies = [], []
    for i, (op, node, body) in enumerate(reqs):
        at, rep = 0x3000 + i * 0x100, 0x3800 + i * 0x100
        chains.append([(at, 40 + len(body), N), (rep, 0x100, W)])
        bodies.append((at, op, node, body, i + 10))
    g = blk(chains)
    for at, op, node, body, u in bodies:
        fuse(g, at, op, node, body, u)
    return g

z = lambda s: s.encode() + b"\0"
reqs = [(1, 1, z("file")), (3, 1, bytes(16)), (27, 1, bytes(8)),
        (35, 1, struct.pack("<IIII", 0o102, 0o644, 0o22, 0) + z("new")),
        (9, 1, struct.pack("<II", 0o755, 0) + z("d2")), (1, 1, z("..")),
        (6, 1, z("ln") + z("/etc/passwd")), (4, 2, struct.pack("<II", 8, 0) + bytes(80))]
os.makedirs("seeds/virtio_fs", exist_ok=True)
open("seeds/virtio_fs/rw_ops", "wb").write(b"\0" + bytes(fs_seed(reqs)))
open("seeds/virtio_fs/ro_ops", "wb").write(b"\1" + bytes(fs_seed(reqs)))

os.makedirs("seeds/acpi", exist_ok=True)
cfg = bytes([2]) + struct.pack("<I", 512) + b"".join(struct.pack("<QQI", 0xd0000000 + i * 0x1000, 0x1000, 5 + i) for i in range(4))
open("seeds/acpi/two_cpus_four_slots", "wb").write(cfg)
open("seeds/acpi/big", "wb").write(bytes([254]) + struct.pack("<I", 8192) + b"".join(struct.pack("<QQI", 0xd0000000 + i * 0x1000, 0x1000, 5 + i) for i in range(32)))
print("device and acpi seeds")


# virtio_gpu: records of len:u16 + a control command (devices/src/fuzzing.rs).
def gpu_hdr(ty, ctx=0, flags=0, fence=0, ring=0):
    return struct.pack("<IIQIB3x", ty, flags, fence, ctx, ring)


def gpu_rec(cmd):
    return struct.pack("<H", len(cmd)) + cmd


def xd(cmd, ring, size):
    return struct.pack("<BBHI", cmd, ring, size, 0)


def submit(ctx, data, **kw):
    return gpu_hdr(0x207, ctx, **kw) + struct.pack("<II", len(data), 0) + data


def blob(ctx, rid, mem, flags, blob_id, size, entries):
    b = gpu_hdr(0x10C, ctx) + struct.pack("<IIIIQQ", rid, mem, flags, len(entries), blob_id, size)
    return b + b"".join(struct.pack("<QII", a, l, 0) for a, l in entries)


gpu = [
    gpu_hdr(0x100), gpu_hdr(0x108) + struct.pack("<II", 0, 0), gpu_hdr(0x109) + struct.pack("<II", 5, 0),
    gpu_hdr(0x200, 1) + struct.pack("<II", 4, 5) + b"test" + bytes(60),
    blob(0, 1, 1, 1, 0, 4096, [(0x4000, 4096)]), blob(0, 2, 1, 1, 0, 4096, [(0x5000, 4096)]),
    gpu_hdr(0x202, 1) + struct.pack("<II", 1, 0), gpu_hdr(0x202, 1) + struct.pack("<II", 2, 0),
    submit(1, xd(1, 0, 20) + struct.pack("<III", 1, 2, 0)),
    submit(1, xd(2, 0, 24) + struct.pack("<IIII", 8192, 1, 0x20203852, 0x11), flags=3, fence=7),
    blob(1, 3, 2, 3, 1, 8192, []),
    gpu_hdr(0x208) + struct.pack("<IIQ", 3, 0, 0x10000),
    gpu_hdr(0x209) + struct.pack("<II", 3, 0),
    gpu_hdr(0x208) + struct.pack("<IIQ", 3, 0, 0x20000),
    gpu_hdr(0x102) + struct.pack("<II", 3, 0),
    submit(1, xd(3, 1, 16) + bytes(8), flags=3, fence=9, ring=1),
    gpu_hdr(0x201, 1),
    gpu_hdr(0x101) + struct.pack("<IIII", 7, 1, 64, 64),
    gpu_hdr(0x103) + struct.pack("<IIIIII", 0, 0, 64, 64, 0, 7),
]
os.makedirs("seeds/virtio_gpu", exist_ok=True)
open("seeds/virtio_gpu/session", "wb").write(b"".join(gpu_rec(c) for c in gpu))


# wl_relay: records of flags (bit 0 event, bits 1-2 fds) + len:u16 + bytes.
def relay_rec(event, m, fds=0):
    return bytes([event | (fds << 1)]) + struct.pack("<H", len(m)) + m


relay = [
    relay_rec(0, msg(1, 1, 2)),
    relay_rec(1, msg(2, 0, 1, "wl_compositor", 9) + msg(2, 0, 2, "wl_shm", 1) + msg(2, 0, 3, "secret_v1", 1)),
    relay_rec(0, msg(2, 0, 2, "wl_shm", 1, 3)),
    relay_rec(0, msg(3, 0, 4, 4096), fds=1),
    relay_rec(0, msg(4, 0, 5, 0, 32, 32, 128, 1)),
    relay_rec(0, msg(2, 0, 1, "wl_compositor", 4, 6) + msg(6, 0, 7)),
    relay_rec(0, msg(7, 1, 5, 0, 0) + msg(7, 6)),
    relay_rec(1, msg(5, 0)),
]
os.makedirs("seeds/wl_relay", exist_ok=True)
open("seeds/wl_relay/shm_window", "wb").write(b"".join(relay))
print("gpu and relay seeds")
