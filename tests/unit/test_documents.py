"""Reading VirtualServer files: YAML streams, JSON, Lists, errors that name the document."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from lvs_operator import documents
from spec_cases import base


def stream(*docs):
    return yaml.safe_dump_all(docs)


def renamed(name, vip="192.0.2.10"):
    doc = base()
    doc["metadata"]["name"] = name
    doc["spec"]["vip"] = vip
    return doc


def test_yaml_stream_json_and_list_agree():
    docs = [renamed("a"), renamed("b", "192.0.2.11")]
    from_yaml = documents.load("---\n" + stream(*docs) + "---\n", source="f")
    from_json = documents.load(json.dumps(docs[0]), source="f")
    from_list = documents.load(json.dumps({"kind": "List", "items": docs}), source="f")
    assert [vs.id for vs in from_yaml] == ["shop/a", "shop/b"]
    assert from_json == from_yaml[:1]
    assert from_list == from_yaml


def test_bad_document_is_named():
    bad = renamed("b")
    bad["spec"]["ports"][0]["port"] = 0
    with pytest.raises(documents.DocumentError) as caught:
        documents.load(stream(renamed("a", "192.0.2.9"), bad), source="vs.yaml")
    assert str(caught.value) == ("vs.yaml: VirtualServer shop/b: spec.ports[0].port: "
                                 "must be from 1 to 65535, got 0")


def test_two_documents_claiming_one_service():
    with pytest.raises(documents.DocumentError, match=r"shop/b and shop/a both claim TCP "):
        documents.load(stream(renamed("a"), renamed("b")), source="f")


def test_syntax_error():
    with pytest.raises(documents.DocumentError, match=r"^f: not valid YAML or JSON"):
        documents.load("a: [", source="f")


def test_service_backend_needs_a_cluster():
    doc = base()
    doc["spec"]["backend"] = {"service": {"name": "web"}}
    servers = documents.load(stream(doc), source="f")
    with pytest.raises(documents.DocumentError, match=r"backend\.service needs the controller"):
        documents.desired_table(servers)


def test_desired_table():
    servers = documents.load(stream(renamed("a"), renamed("b", "192.0.2.11")), source="f")
    table = documents.desired_table(servers)
    assert sorted(str(k) for k in table) == ["TCP 192.0.2.10:80", "TCP 192.0.2.11:80"]


def test_json_syntax_error():
    with pytest.raises(documents.DocumentError, match=r"^f: not valid YAML or JSON"):
        documents.load('{"kind": "List", ', source="f")


def test_yaml_stream_of_json_style_documents():
    """Starts like JSON but is a YAML stream: the YAML loader reads it, not a JSON error."""
    docs = [renamed("a"), renamed("b", "192.0.2.11")]
    text = json.dumps(docs[0]) + "\n---\n" + json.dumps(docs[1]) + "\n"
    from_flow = documents.load(text, source="f")
    assert from_flow == documents.load(stream(*docs), source="f")


def test_json_style_stream_with_a_syntax_error():
    text = json.dumps(renamed("a")) + "\n---\n" + '{"kind": "VirtualServer", "spec": {\n'
    with pytest.raises(documents.DocumentError, match=r"(?s)^f: not valid YAML or JSON: .*line 4"):
        documents.load(text, source="f")


def test_apply_of_json_imports_no_yaml_nor_cluster_clients():
    """`ipvs apply` of a JSON file is benchmarked end to end: what it loads matters."""
    code = (
        "import json, sys\n"
        "from lvs_operator import cli, documents, syncer\n"
        "from lvs_operator.ipvs import kernel\n"
        "from lvs_operator.network import errors, sysctl\n"
        f"documents.load(json.dumps({base()!r}), source='f')\n"
        "from lvs_operator import ownership, plan\n"
        # Third-party packages only: the standard library is imported normally.
        "heavy = {'yaml', 'kubernetes', 'kopf', 'pyroute2', 'urllib3', 'aiohttp'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_the_console_script_prints_and_exits_with_the_status(tmp_path):
    """What an `ipvs` command printed comes out, and the process exits with its status."""
    missing = tmp_path / "missing.json"
    code = ("import sys\n"
            f"sys.argv = ['lvs-operator', 'ipvs', 'apply', '-f', {str(missing)!r}]\n"
            "from lvs_operator.cli import console\n"
            "print('before', end='')\n"
            "console()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stdout == "before"
    assert f"cannot read {missing}" in done.stderr
