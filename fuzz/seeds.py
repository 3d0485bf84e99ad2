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
print(len(seeds), "seeds")
