"""The multi-GPU settings as pure functions: COGVX_PARALLEL_STALL_S, and the loopback interface
of the ranks' gloo/NCCL sockets (user values kept)."""

from __future__ import annotations

import os
import socket

import pytest

from cogvx import settings


@pytest.mark.parametrize(
    "value, seconds",
    [(None, 1800.0), ("", 1800.0), ("  ", 1800.0), ("off", None), (" OFF ", None),
     ("30", 30.0), ("2.5", 2.5), ("1e3", 1000.0)],
)  # fmt: skip
def test_stall_limit(monkeypatch, value, seconds):
    if value is None:
        monkeypatch.delenv("COGVX_PARALLEL_STALL_S", raising=False)
    else:
        monkeypatch.setenv("COGVX_PARALLEL_STALL_S", value)
    assert settings.parallel_stall_seconds() == seconds


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan", "inf", "10s", "never"])
def test_a_bad_stall_limit_names_the_variable_and_what_is_allowed(monkeypatch, value):
    monkeypatch.setenv("COGVX_PARALLEL_STALL_S", value)
    expected = f"COGVX_PARALLEL_STALL_S={value!r}: expected seconds above 0 (e.g. 1800) or off"
    with pytest.raises(ValueError) as caught:
        settings.parallel_stall_seconds()
    assert str(caught.value) == expected


def test_a_long_bad_stall_limit_is_cut_in_the_message(monkeypatch):
    monkeypatch.setenv("COGVX_PARALLEL_STALL_S", "x" * 1000)
    with pytest.raises(ValueError, match=r"^COGVX_PARALLEL_STALL_S='x{40}': expected") as caught:
        settings.parallel_stall_seconds()
    assert len(str(caught.value)) < 120


@pytest.mark.parametrize(
    "names, loopback",
    [(["lo", "eth0"], "lo"), (["eth0", "lo"], "lo"), (["en0", "lo0", "gif0"], "lo0"),
     (["eth0", "lowpan0", "lo"], "lo"), (["eth0"], "lo"), ([], "lo")],
)  # fmt: skip
def test_loopback_interface(names, loopback):
    assert settings.loopback_interface(names) == loopback


def test_rank_sockets_go_to_loopback_unless_the_user_named_an_interface():
    interfaces = ["eth0", "lo0"]
    assert settings.rank_socket_values({}, interfaces) == {
        "GLOO_SOCKET_IFNAME": "lo0", "NCCL_SOCKET_IFNAME": "lo0",
    }  # fmt: skip
    user = {"GLOO_SOCKET_IFNAME": "eth1", "NCCL_SOCKET_IFNAME": "  ", "OTHER": "x"}
    assert settings.rank_socket_values(user, interfaces) == {
        "GLOO_SOCKET_IFNAME": "eth1", "NCCL_SOCKET_IFNAME": "lo0",  # a blank value is unset
    }  # fmt: skip


def test_pinning_sets_this_machines_loopback_and_keeps_user_values(monkeypatch):
    loopback = settings.loopback_interface(name for _, name in socket.if_nameindex())
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "=ib0")
    values = settings.pin_rank_sockets()
    assert values == {"GLOO_SOCKET_IFNAME": loopback, "NCCL_SOCKET_IFNAME": "=ib0"}
    assert os.environ["GLOO_SOCKET_IFNAME"] == loopback
    assert os.environ["NCCL_SOCKET_IFNAME"] == "=ib0"
