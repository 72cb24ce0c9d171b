"""The broker's side of ``madrpc deploy``: versions kept (in memory and on disk), who is
sent what, and who may deploy. Pure: BrokerState driven with frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from broker_support import W1, W2, call, error_code, new_state, ready, sent

from madrpc import protocol as p
from madrpc.broker_scripts import ScriptStore
from madrpc.bundle import Bundle
from madrpc.errors import ErrorCode

V1 = Bundle("index.js", {"index.js": "madrpc.register('v', () => 1);"})
V2 = Bundle("index.js", {"index.js": "madrpc.register('v', () => 2);"})


def as_params(bundle: Bundle) -> dict[str, Any]:
    return {"bundle": orjson.loads(bundle.encode())}


def deploy(state: Any, params: Any, peer: str | None = None) -> Any:
    call(state, "_deploy", params=params, peer=peer)
    [(_, response)] = sent(state).replies
    return response


def scripts_sent(frames: list[list[bytes]], identity: bytes) -> list[list[bytes]]:
    return [f[3:] for f in frames if f[0] == identity and f[2] == p.SCRIPT]


def test_a_deploy_becomes_current_and_goes_to_workers_that_run_the_grids_script() -> None:
    state = new_state()
    ready(state, W1, deployed=True, script_version="")
    ready(state, W2, deployed=False, script_version="abc")
    sent(state)

    call(state, "_deploy", params=as_params(V1))
    out = sent(state)

    [(_, response)] = out.replies
    assert response["result"]["version"] == V1.version
    assert response["result"]["previous"] is None
    assert response["result"]["workers"] == 1
    assert scripts_sent(out.backend, W1) == [[V1.version.encode(), V1.encode()]]
    assert scripts_sent(out.backend, W2) == []


def test_rollback_swaps_back_and_deploying_the_current_version_again_changes_nothing() -> None:
    state = new_state()
    deploy(state, as_params(V1))
    deploy(state, as_params(V2))

    again = deploy(state, as_params(V2))["result"]
    back = deploy(state, {"rollback": True})["result"]

    assert again["version"] == again["previous"] == V2.version
    assert (back["version"], back["previous"]) == (V1.version, V2.version)


def test_rollback_with_no_previous_version_and_bad_params_get_invalid_params() -> None:
    state = new_state()

    for params in ({"rollback": True}, {"bundle": {"entry": "x"}}, [1], {}):
        response = deploy(state, params)
        assert error_code(response) == ErrorCode.INVALID_PARAMS, params


def test_fetch_before_any_deploy_gets_an_empty_script_and_the_first_deploy_later() -> None:
    state = new_state()
    state.on_worker_message(W1, p.message(p.FETCH, b""), 0.0)
    assert scripts_sent(sent(state).backend, W1) == [[]]

    call(state, "_deploy", params=as_params(V1))

    assert scripts_sent(sent(state).backend, W1) == [[V1.version.encode(), V1.encode()]]


def test_fetch_by_a_worker_that_has_the_current_version_is_told_nothing_is_newer() -> None:
    state = new_state()
    deploy(state, as_params(V1))

    state.on_worker_message(W1, p.message(p.FETCH, V1.version.encode()), 0.0)

    assert scripts_sent(sent(state).backend, W1) == [[V1.version.encode()]]


def test_a_worker_registering_with_an_older_version_is_sent_the_current_one() -> None:
    state = new_state()
    deploy(state, as_params(V2))

    ready(state, W1, deployed=True, script_version=V1.version)

    assert scripts_sent(sent(state).backend, W1) == [[V2.version.encode(), V2.encode()]]


def test_metrics_and_info_name_the_current_version_and_each_workers() -> None:
    state = new_state()
    deploy(state, as_params(V1))
    ready(state, W1, deployed=True, script_version=V1.version)
    sent(state)

    call(state, "_metrics", params=None)
    [(_, response)] = sent(state).replies
    call(state, "_info", params=None)
    [(_, info)] = sent(state).replies

    assert response["result"]["script_version"] == V1.version
    assert response["result"]["workers"][0]["script_version"] == V1.version
    assert response["result"]["workers"][0]["deployed"] is True
    assert info["result"]["script"]["version"] == V1.version
    assert info["result"]["script"]["current"]["files"] == 1


def test_a_plaintext_broker_that_other_machines_can_reach_refuses_deploys() -> None:
    state = new_state(frontend="tcp://198.18.0.1:5555", insecure=True)

    response = deploy(state, as_params(V1))

    assert error_code(response) == ErrorCode.FORBIDDEN
    assert "CURVE" in response["error"]["message"]


def test_the_store_keeps_both_versions_on_disk_for_a_restarted_broker(tmp_path: Path) -> None:
    store = ScriptStore(str(tmp_path))
    store.deploy(orjson.loads(V1.encode()), 1.0)
    store.deploy(orjson.loads(V2.encode()), 2.0)

    again = ScriptStore(str(tmp_path))

    assert again.current is not None and again.previous is not None
    assert (again.current.version, again.previous.version) == (V2.version, V1.version)
    assert again.current.data == V2.encode()
    assert (tmp_path / "current.json").stat().st_mode & 0o777 == 0o600


def test_a_damaged_state_file_is_ignored_with_an_error_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "current.json").write_text("{not json")

    store = ScriptStore(str(tmp_path))

    assert store.current is None and store.previous is None
