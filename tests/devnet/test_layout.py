"""Devnet layouts from flags and TOML files, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from flnode.devnet import LayoutError, layout_from_counts, load_layout


def test_counts_name_nodes_by_role_miners_first() -> None:
    layout = layout_from_counts(miners=2, devices=3, edges=1, manufacturers=1)
    assert [n.name for n in layout.nodes] == [
        "miner-0",
        "miner-1",
        "edge-0",
        "device-0",
        "device-1",
        "device-2",
        "manufacturer-0",
    ]
    assert layout.nodes[2].roles == ("edge",)


def test_toml_layout_with_named_nodes_and_config(tmp_path: Path) -> None:
    path = tmp_path / "layout.toml"
    path.write_text(
        'network_id = "lab"\nminers = 1\ndevices = 1\n'
        '[[node]]\nname = "gateway"\nroles = ["edge", "device"]\n'
        "config.p2p.max_peers = 8\nconfig.log.level = 'debug'\n"
        "[config.p2p]\nmax_peers = 16\nmdns = false\n"
    )
    layout = load_layout(path, devices=2)
    assert layout.network_id == "lab"
    assert [n.name for n in layout.nodes] == ["miner-0", "device-0", "device-1", "gateway"]
    assert layout.config == {"p2p": {"max_peers": 16, "mdns": False}}
    assert layout.node_config(layout.nodes[0]) == layout.config
    assert layout.node_config(layout.nodes[3]) == {
        "p2p": {"max_peers": 8, "mdns": False},
        "log": {"level": "debug"},
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("miners = 1\n[config.p2p]\nmax_peer = 3\n", "config.p2p.max_peer: Extra inputs"),
        ("minors = 1\n", "unknown key(s) minors"),
        ("devices = 0\n", "at least one node"),
        ('miners = 1\n[[node]]\nname = "miner-0"\nroles = ["miner"]\n', "names repeat: miner-0"),
        ('[[node]]\nname = "Bad Name"\nroles = ["miner"]\n', "node name 'Bad Name'"),
        ('[[node]]\nname = "x"\nroles = ["king"]\n', "roles"),
        (
            '[[node]]\nname = "x"\nroles = ["miner"]\nconfig.api.port = -1\n',
            "node x: config.api.port",
        ),
        ("miners = [\n", "not valid TOML"),
    ],
)
def test_bad_layouts_say_what_is_wrong(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "layout.toml"
    path.write_text(text)
    with pytest.raises(LayoutError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_layout(path)
