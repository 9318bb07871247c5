"""kube.client.Client.connect: one credentials loader for both binaries (a given kubeconfig
file; else the pod's service account; else $KUBECONFIG or ~/.kube/config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvs_operator.kube import client


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(f"""
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
users: [{{name: u, user: {{token: secret}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
""")
    return path


@pytest.fixture(autouse=True)
def outside_a_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_the_given_file(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "given", "https://10.0.0.1:6443")
    api = client.Client.connect(str(path))
    try:
        assert api.configuration.host == "https://10.0.0.1:6443"
        assert "Bearer secret" in api.configuration.api_key.values()
    finally:
        api.close()


def test_kubeconfig_from_the_environment_outside_a_pod(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = kubeconfig(tmp_path / "env", "https://10.0.0.2:6443")
    monkeypatch.setenv("KUBECONFIG", str(path))
    api = client.Client.connect(None, pool=17)
    try:
        assert api.configuration.host == "https://10.0.0.2:6443"
        assert api.configuration.connection_pool_maxsize == 17
    finally:
        api.close()


def test_home_kubeconfig_outside_a_pod(tmp_path: Path) -> None:
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    kubeconfig(tmp_path / "home" / ".kube" / "config", "https://10.0.0.3:6443")
    api = client.Client.connect(None)
    try:
        assert api.configuration.host == "https://10.0.0.3:6443"
    finally:
        api.close()


def test_nothing_to_load_says_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(client.ApiError) as raised:
        client.Client.connect(None)
    assert raised.value.status == 0
    assert "in-cluster service account, then ~/.kube/config" in str(raised.value)
    assert "--kubeconfig" in str(raised.value)
    with pytest.raises(client.ApiError) as raised:
        client.Client.connect(str(tmp_path / "missing"))
    assert f"kubeconfig file {tmp_path / 'missing'}" in str(raised.value)


class ClosedResponse:
    """A watch response whose socket its reader already closed."""

    closed = False

    def shutdown(self) -> None:
        raise OSError(9, "Bad file descriptor")

    def close(self) -> None:
        self.closed = True


def test_closing_a_watch_that_ended_meanwhile_is_fine() -> None:
    response = ClosedResponse()
    client._Stream(response).close()  # type: ignore[arg-type]
    assert response.closed
