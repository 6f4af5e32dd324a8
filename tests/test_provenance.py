"""Provenance: activities, FITS cards, lineage walks across repositories, PROV-JSON, the CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from conftest import Backend

import objbutler
from objbutler import Activity, Butler, DatasetRef
from objbutler.cli import main
from objbutler.provenance import (
    ACTIVITY_PREFIX,
    MAX_HEADER_INPUTS,
    LineageGraph,
    current_activity,
    provenance_cards,
    software_versions,
)


def image(value: float = 1.0) -> np.ndarray:
    return np.full((8, 6), value, dtype="float32")


@dataclasses.dataclass
class Lineage:
    """Three generations: raws (repo A) + a bias (repo B) -> calexps -> a coadd that rejected one calexp."""

    a: Butler
    b: Butler
    bias: DatasetRef
    raws: list[DatasetRef]
    calexps: list[DatasetRef]
    coadd: DatasetRef
    isr: Activity
    coadd_activity: Activity


def make_lineage(a: Butler, b: Butler) -> Lineage:
    bias = b.put(image(0.0), "bias", {"detector": 1}, run="calib")
    raws = [a.put(image(i), "raw", {"visit": i, "detector": 1}, run="raw") for i in range(3)]
    with a.activity("isr", config={"doBias": True, "gain": 1.7}, software={"ip_isr": "27.0"}) as isr:
        calexps = [
            a.put(image(i), "calexp", {"visit": i, "detector": 1}, run="proc", inputs=[raw, bias],
                  derived_from=[raw, bias])
            for i, raw in enumerate(raws)
        ]
    coadd_activity = Activity("make_coadd", {"clip_sigma": 3.0, "rejected": [calexps[2].id]})
    coadd = a.put(image(9.0), "deepCoadd", {"tract": 1}, run="coadds", inputs=calexps, derived_from=calexps[:2],
                  activity=coadd_activity.finish())
    return Lineage(a, b, bias, raws, calexps, coadd, isr, coadd_activity)


@pytest.fixture
def lineage(tmp_path: Path) -> Lineage:
    return make_lineage(Butler.create(str(tmp_path / "a")), Butler.create(str(tmp_path / "b")))


# -- recording -------------------------------------------------------------------


def test_activity_fields_and_json_round_trip() -> None:
    act = Activity("make_coadd", {"clip": 3.0, "bands": ("g", "r")}, {"pipe_tasks": "27.1"})
    assert act.config == {"clip": 3.0, "bands": ["g", "r"]}  # a JSON copy
    versions = software_versions()
    assert act.software["numpy"] == np.__version__ and act.software["objbutler"] == objbutler.__version__
    assert act.software["astropy"] == versions["astropy"] and act.software["pipe_tasks"] == "27.1"
    assert act.host and act.started.endswith("Z") and act.ended is None
    assert Activity.from_json(json.loads(json.dumps(act.finish().to_json()))) == act
    with pytest.raises(ValueError, match="JSON-safe"):
        Activity("bad", {"x": float("nan")})
    with pytest.raises(ValueError, match="JSON-safe"):
        Activity("bad", {"x": object()})
    with pytest.raises(ValueError, match="name"):
        Activity("  ")


def test_activity_block_stamps_every_put_and_records_its_end(lineage: Lineage) -> None:
    a = lineage.a
    records = [a.find("calexp", {"visit": i, "detector": 1}, "proc").provenance for i in range(3)]
    assert all(r is not None and r["activity"]["id"] == lineage.isr.id for r in records)
    stored = records[0]["activity"]  # type: ignore[index]
    assert stored["config"] == {"doBias": True, "gain": 1.7} and stored["software"]["ip_isr"] == "27.0"
    assert stored["ended"] is None  # not known while the block was open ...
    completion = json.loads(a.store.get(f"{ACTIVITY_PREFIX}{lineage.isr.id}.json"))
    assert completion["ended"] == lineage.isr.ended is not None  # ... recorded when it closed
    assert lineage.isr.outputs == [c.id for c in lineage.calexps]
    graph = a.provenance(lineage.coadd)
    assert graph.activities[lineage.isr.id].ended == lineage.isr.ended
    assert graph.activities[lineage.coadd_activity.id].ended == lineage.coadd_activity.ended


def test_activity_scope_is_per_butler_nests_and_ends(tmp_path: Path) -> None:
    a, b = Butler.create(str(tmp_path / "a")), Butler.create(str(tmp_path / "b"))
    explicit = Activity("explicit")
    with a.activity("outer") as outer:
        in_b = b.put({"x": 1}, "m", {"i": 1}, run="r")
        with a.activity("inner") as inner:
            nested = a.put({"x": 1}, "m", {"i": 2}, run="r")
        back_out = a.put({"x": 1}, "m", {"i": 3}, run="r")
        chosen = a.put({"x": 1}, "m", {"i": 4}, run="r", activity=explicit)
    after = a.put({"x": 1}, "m", {"i": 5}, run="r")
    assert in_b.provenance is None and after.provenance is None
    assert nested.provenance["activity"]["id"] == inner.id  # type: ignore[index]
    assert back_out.provenance["activity"]["id"] == outer.id  # type: ignore[index]
    assert chosen.provenance["activity"]["id"] == explicit.id  # type: ignore[index]
    assert chosen.provenance["inputs"] == []  # type: ignore[index]


def test_activity_block_ends_even_when_the_body_fails(tmp_path: Path) -> None:
    a = Butler.create(str(tmp_path / "a"))
    with pytest.raises(RuntimeError), a.activity("crashes") as act:
        a.put({"x": 1}, "m", {"i": 1}, run="r")
        raise RuntimeError("boom")
    assert act.ended is not None and current_activity(a) is None
    assert json.loads(a.store.get(f"{ACTIVITY_PREFIX}{act.id}.json"))["ended"] == act.ended


def test_an_activity_block_stamps_only_its_own_threads_puts(tmp_path: Path) -> None:
    """A Butler shared by threads: a block open in one thread never stamps another thread's put."""
    a = Butler.create(str(tmp_path / "a"))
    other: list[DatasetRef] = []
    with a.activity("mine") as act:
        worker = threading.Thread(target=lambda: other.append(a.put({"x": 2}, "m", {"i": 2}, run="r")))
        worker.start()
        worker.join()
        mine = a.put({"x": 1}, "m", {"i": 1}, run="r")
    assert mine.provenance["activity"]["id"] == act.id  # type: ignore[index]
    assert not (other[0].provenance or {}).get("activity")
    assert act.outputs == [mine.id]


def test_derived_from_must_be_a_subset_and_nothing_is_written(tmp_path: Path) -> None:
    a = Butler.create(str(tmp_path / "a"))
    x = a.put(image(), "raw", {"visit": 1}, run="raw")
    y = a.put(image(), "raw", {"visit": 2}, run="raw")
    with pytest.raises(ValueError, match="subset"):
        a.put(image(), "calexp", {"visit": 1}, run="proc", inputs=[x], derived_from=[y])
    assert [r for r in a.query() if r.dataset_type == "calexp"] == []
    assert [m.key for m in a.store.list("data/proc/")] == []


def test_fits_header_cards_are_bounded(tmp_path: Path) -> None:
    a = Butler.create(str(tmp_path / "a"))
    inputs = [a.put({"i": i}, "metric", {"visit": i}, run="m") for i in range(MAX_HEADER_INPUTS + 5)]
    derived = inputs[::2]
    ref = a.put(image(), "coadd", {"tract": 1}, run="c", inputs=inputs, derived_from=derived,
                activity=Activity("make_coadd"))
    header = a.get(ref).meta
    assert header["PROVACT"] == "make_coadd"
    assert header["PROVNIN"] == len(inputs) and header["PROVNDER"] == len(derived)
    for n in range(1, MAX_HEADER_INPUTS + 1):
        assert header[f"PROVIN{n}"] == inputs[n - 1].id
        assert header[f"PROVDF{n}"] is (inputs[n - 1] in derived)
    assert f"PROVIN{MAX_HEADER_INPUTS + 1}" not in header
    assert len(ref.provenance["inputs"]) == len(inputs)  # type: ignore[index]  # the full list: registry only
    with fits.open(io.BytesIO(a.store.get(ref.key))) as hdul:  # the stored file itself carries them
        assert hdul[0].header["PROVNIN"] == len(inputs)


def test_fits_cards_replace_stale_ones_and_leave_the_callers_header_alone(tmp_path: Path) -> None:
    a = Butler.create(str(tmp_path / "a"))
    one = a.put({"i": 1}, "metric", {"visit": 1}, run="m")
    two = a.put({"i": 2}, "metric", {"visit": 2}, run="m")
    hdu = fits.PrimaryHDU(image())
    hdu.header["OBJECT"] = "M31"
    first = a.put(hdu, "calexp", {"visit": 1}, run="p", inputs=[one, two])
    assert "PROVNIN" not in hdu.header  # the caller's header is not modified
    again = a.get(first)  # read back (with cards) and put as a new dataset with other provenance
    second = a.put(again, "calexp", {"visit": 2}, run="p", inputs=[two], derived_from=[two])
    header = a.get(second).meta
    assert header["PROVNIN"] == 1 and header["PROVIN1"] == two.id and header["PROVDF1"] is True
    assert "PROVIN2" not in header and header["OBJECT"] == "M31"


def test_zarr_and_plain_puts_get_no_cards(tmp_path: Path) -> None:
    a = Butler.create(str(tmp_path / "a"))
    one = a.put({"i": 1}, "metric", {"visit": 1}, run="m")
    zarr_ref = a.put(image(), "calexp", {"visit": 1}, run="p", format="zarr", inputs=[one])
    plain = a.put(image(), "calexp", {"visit": 2}, run="p")
    assert "PROVNIN" not in a.get(zarr_ref).meta and "PROVNIN" not in a.get(plain).meta
    assert zarr_ref.provenance["inputs"][0]["id"] == one.id  # type: ignore[index]


def test_provenance_cards_fit_in_a_card() -> None:
    link = {"id": "0" * 36, "repository": "s3://b/" + "x" * 200, "dataset_type": "t" * 100,
            "data_id": {"k" * 60: "v" * 200}, "run": "r"}
    record = {"inputs": [link], "derived_from": [link], "activity": {"id": "1" * 36, "name": "n" * 300}}
    header = fits.Header()
    for key, value, comment in provenance_cards(record):
        header.append((key, value, comment))
    assert len(header.tostring()) % 80 == 0 and header["PROVIN1"] == "0" * 36  # no card needed CONTINUE


# -- walking ---------------------------------------------------------------------


def _lineage_on(backend: Backend) -> Lineage:
    return make_lineage(Butler.create(backend.new_uri(), **backend.options),
                        Butler.create(backend.new_uri(), **backend.options))


@pytest.mark.parametrize("backend_name", ["local", pytest.param("localstack", marks=pytest.mark.servers)])
def test_three_generations_with_a_cross_repository_input(request: pytest.FixtureRequest, backend_name: str) -> None:
    lin = _lineage_on(request.getfixturevalue(f"{backend_name}_backend"))
    # A local repository opens from its path alone; one on a server is given (its options are not lent).
    given = [] if backend_name == "local" else [lin.b]
    graph = lin.a.provenance(lin.coadd, repositories=given)
    expected = {lin.coadd.id, lin.bias.id, *(r.id for r in lin.raws), *(c.id for c in lin.calexps)}
    assert set(graph.nodes) == expected
    assert all(node.resolved for node in graph.nodes.values())
    bias = graph.nodes[lin.bias.id]
    assert bias.repository == lin.b.uri and bias.ref is not None and bias.ref.dataset_type == "bias"
    kinds = {(e.output, e.input): e.kind for e in graph.edges}
    assert kinds[(lin.coadd.id, lin.calexps[0].id)] == "wasDerivedFrom"
    assert kinds[(lin.coadd.id, lin.calexps[2].id)] == "used"  # rejected by the coadd
    for calexp, raw in zip(lin.calexps, lin.raws, strict=True):
        assert kinds[(calexp.id, raw.id)] == "wasDerivedFrom"
        assert kinds[(calexp.id, lin.bias.id)] == "wasDerivedFrom"
    assert len(graph.edges) == 3 + 2 * 3
    assert {a.name for a in graph.activities.values()} == {"isr", "make_coadd"}
    assert graph.nodes[lin.calexps[1].id].activity_id == lin.isr.id

    shallow = lin.a.provenance(lin.coadd, depth=1)
    assert set(shallow.nodes) == {lin.coadd.id, *(c.id for c in lin.calexps)}
    assert set(lin.a.provenance(lin.coadd, depth=0).nodes) == {lin.coadd.id}
    by_name = lin.a.provenance("deepCoadd", {"tract": 1}, "coadds", repositories=given)
    assert set(by_name.nodes) == expected


def test_descendants_within_a_repository(lineage: Lineage) -> None:
    a = lineage.a
    down = a.descendants(lineage.raws[0])
    assert down.direction == "downstream"
    assert set(down.nodes) == {lineage.raws[0].id, lineage.calexps[0].id, lineage.coadd.id}
    assert {(e.output, e.input, e.kind) for e in down.edges} == {
        (lineage.calexps[0].id, lineage.raws[0].id, "wasDerivedFrom"),
        (lineage.coadd.id, lineage.calexps[0].id, "wasDerivedFrom"),
    }
    # a dataset of repository B: what repository A made from it
    from_bias = a.descendants(lineage.bias)
    assert set(from_bias.nodes) == {lineage.bias.id, lineage.coadd.id, *(c.id for c in lineage.calexps)}
    assert set(a.descendants(lineage.raws[2], depth=1).nodes) == {lineage.raws[2].id, lineage.calexps[2].id}
    assert set(a.descendants(lineage.coadd).nodes) == {lineage.coadd.id}


def test_descendants_scan_the_registry_once(lineage: Lineage, monkeypatch: pytest.MonkeyPatch) -> None:
    from objbutler.registry.state import RegistryState

    calls = []
    original = RegistryState.all_refs
    monkeypatch.setattr(RegistryState, "all_refs", lambda self: calls.append(1) or original(self))
    lineage.a.descendants(lineage.raws[0])
    assert len(calls) == 1


def test_unreachable_inputs_are_unresolved_nodes(lineage: Lineage) -> None:
    shutil.rmtree(lineage.b.uri)  # repository B is gone
    graph = lineage.a.provenance(lineage.coadd)
    bias = graph.nodes[lineage.bias.id]
    assert not bias.resolved and "cannot open repository" in (bias.problem or "")
    assert bias.dataset_type == "bias" and bias.data_id == {"detector": 1}  # from the link
    text = graph.to_tree_text()
    assert "unresolved" in text and "bias" in text


def test_other_repositories_can_be_given(lineage: Lineage) -> None:
    calls = []

    class Spy(Butler):
        def __init__(self, uri: str, **kw: object) -> None:
            calls.append(uri)
            super().__init__(uri, **kw)  # type: ignore[arg-type]

    spy = Spy(lineage.a.uri)
    spy.provenance(lineage.coadd)
    assert calls == [lineage.a.uri, lineage.b.uri]  # B opened once per walk, not per link
    calls.clear()
    spy.provenance(lineage.coadd, repositories=[lineage.b])
    assert calls == []


@pytest.mark.servers
def test_a_walk_never_lends_this_repositorys_credentials(moto_backend: Backend,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Another repository named by a provenance record is opened without this Butler's store options."""
    lin = _lineage_on(moto_backend)
    opened: list[tuple[str, dict[str, object]]] = []

    class Spy(Butler):
        def __init__(self, uri: str, **options: object) -> None:
            opened.append((uri, dict(options)))
            super().__init__(uri, **options)  # type: ignore[arg-type]

    home = Spy(lin.a.uri, **moto_backend.options)
    env = moto_backend.options  # the environment configures the other repository, with its own keys
    monkeypatch.setenv("AWS_ENDPOINT_URL", str(env["endpoint_url"]))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "OTHER-KEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "OTHER-SECRET")
    graph = home.provenance(lin.coadd)
    assert graph.nodes[lin.bias.id].resolved  # reached through the environment
    others = [options for uri, options in opened if uri == lin.b.uri]
    assert others == [{}], others  # no endpoint, no key of this repository's was passed on
    resolved: list[str] = []

    def resolver(uri: str) -> Butler:
        resolved.append(uri)
        return Butler(uri, **moto_backend.options)

    assert home.provenance(lin.coadd, resolver=resolver).nodes[lin.bias.id].resolved
    assert resolved == [lin.b.uri]


def test_tree_text(lineage: Lineage) -> None:
    text = lineage.a.provenance(lineage.coadd).to_tree_text()
    lines = text.splitlines()
    assert lines[0].startswith('inputs of deepCoadd {"tract": 1} run=coadds') and "<make_coadd>" in lines[0]
    assert sum("[derived] calexp" in line for line in lines) == 2
    assert sum("[used] calexp" in line for line in lines) == 1
    assert sum(f"@ {lineage.b.uri}" in line for line in lines) == 3
    assert "│   └── [derived] bias" in text or "    └── [derived] bias" in text
    down = lineage.a.descendants(lineage.raws[1]).to_tree_text()
    assert down.splitlines()[0].startswith("datasets made from raw")
    assert "└── [derived] calexp" in down and "    └── [derived] deepCoadd" in down


# -- PROV-JSON -------------------------------------------------------------------


def _relations(doc: dict, kind: str, a: str, b: str) -> set[tuple[str, str]]:
    return {(r[a], r[b]) for r in doc.get(kind, {}).values()}


def test_prov_json_has_the_expected_relations(lineage: Lineage) -> None:
    graph = lineage.a.provenance(lineage.coadd)
    doc = json.loads(json.dumps(graph.to_prov_json()))
    ent = {r.id: f"objbutler:dataset-{r.id}" for r in [lineage.coadd, lineage.bias, *lineage.raws, *lineage.calexps]}
    isr, coadd_act = f"objbutler:activity-{lineage.isr.id}", f"objbutler:activity-{lineage.coadd_activity.id}"
    assert doc["prefix"] == {"objbutler": "urn:objbutler:"}
    assert set(doc["entity"]) == set(ent.values())
    assert set(doc["activity"]) == {isr, coadd_act}
    assert doc["activity"][coadd_act]["prov:label"] == "make_coadd"
    assert doc["activity"][coadd_act]["prov:endTime"] == lineage.coadd_activity.ended
    assert json.loads(doc["activity"][isr]["objbutler:config"]) == {"doBias": True, "gain": 1.7}
    assert _relations(doc, "wasGeneratedBy", "prov:entity", "prov:activity") == {
        (ent[lineage.coadd.id], coadd_act), *((ent[c.id], isr) for c in lineage.calexps)}
    assert _relations(doc, "used", "prov:activity", "prov:entity") == {
        *((coadd_act, ent[c.id]) for c in lineage.calexps),
        *((isr, ent[r.id]) for r in lineage.raws), (isr, ent[lineage.bias.id])}
    assert _relations(doc, "wasDerivedFrom", "prov:generatedEntity", "prov:usedEntity") == {
        *((ent[lineage.coadd.id], ent[c.id]) for c in lineage.calexps[:2]),
        *((ent[c.id], ent[r.id]) for c, r in zip(lineage.calexps, lineage.raws, strict=True)),
        *((ent[c.id], ent[lineage.bias.id]) for c in lineage.calexps)}
    assert doc["entity"][ent[lineage.bias.id]]["objbutler:repository"] == lineage.b.uri


def test_prov_json_without_recorded_activity_gets_a_placeholder(tmp_path: Path) -> None:
    a = Butler.create(str(tmp_path / "a"))
    x = a.put({"i": 1}, "metric", {"visit": 1}, run="m")
    y = a.put({"i": 2}, "metric", {"visit": 2}, run="m", inputs=[x])
    doc = a.provenance(y).to_prov_json()
    (placeholder,) = doc["activity"]
    assert doc["activity"][placeholder]["objbutler:recorded"] is False
    assert _relations(doc, "used", "prov:activity", "prov:entity") == {(placeholder, f"objbutler:dataset-{x.id}")}
    assert "wasDerivedFrom" not in doc


def test_prov_json_validates_with_the_prov_package(lineage: Lineage) -> None:
    prov = pytest.importorskip("prov")
    from prov.model import ProvActivity, ProvDerivation, ProvEntity, ProvGeneration, ProvUsage

    text = json.dumps(lineage.a.provenance(lineage.coadd).to_prov_json())
    document = prov.read(io.StringIO(text), format="json")
    records = document.get_records()
    count = {cls: sum(isinstance(r, cls) for r in records) for cls in
             (ProvEntity, ProvActivity, ProvUsage, ProvGeneration, ProvDerivation)}
    assert count == {ProvEntity: 8, ProvActivity: 2, ProvUsage: 3 + 4, ProvGeneration: 4, ProvDerivation: 2 + 6}
    coadd_activity = document.get_record(f"objbutler:activity-{lineage.coadd_activity.id}")[0]
    assert coadd_activity.get_endTime() is not None and coadd_activity.get_startTime() is not None
    # and back out through prov's own serializer
    assert json.loads(document.serialize(format="json"))["entity"]


def test_lineage_graph_helpers(lineage: Lineage) -> None:
    graph: LineageGraph = lineage.a.provenance(lineage.coadd)
    assert {e.input for e in graph.inputs_of(lineage.coadd.id)} == {c.id for c in lineage.calexps}
    assert {e.output for e in graph.outputs_of(lineage.bias.id)} == {c.id for c in lineage.calexps}


# -- CLI -------------------------------------------------------------------------


def test_cli_provenance(lineage: Lineage) -> None:
    runner = CliRunner()
    args = ["provenance", lineage.a.uri, "deepCoadd", "--data-id", "tract=1", "--run", "coadds"]
    tree = runner.invoke(main, args)
    assert tree.exit_code == 0, tree.output
    assert tree.output.startswith("inputs of deepCoadd") and "[derived] bias" in tree.output
    exported = runner.invoke(main, [*args, "--format", "prov-json"])
    assert exported.exit_code == 0, exported.output
    assert len(json.loads(exported.output)["entity"]) == 8
    shallow = runner.invoke(main, [*args, "--depth", "1"])
    assert "raw" not in shallow.output and shallow.output.count("calexp") == 3
    down = runner.invoke(main, ["provenance", lineage.a.uri, "raw", "--data-id", "visit=0", "--data-id",
                                "detector=1", "--run", "raw", "--descendants"])
    assert down.exit_code == 0, down.output
    assert down.output.startswith("datasets made from raw") and "deepCoadd" in down.output
    missing = runner.invoke(main, ["provenance", lineage.a.uri, "deepCoadd", "--data-id", "tract=2"])
    assert missing.exit_code == 3 and "error: no deepCoadd with data ID" in missing.output


def test_a_repository_opened_by_a_relative_path_is_home_to_links_recorded_with_its_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = Butler.create(str(tmp_path / "camera"))
    raw = absolute.put({"adu": 1}, "raw", {"exposure": 1}, run="raw")
    calexp = absolute.put({"flux": 2}, "calexp", {"visit": 1}, run="isr", inputs=[raw])
    monkeypatch.chdir(tmp_path)
    relative = Butler("camera")
    text = relative.provenance(relative.query("calexp")[0]).to_tree_text()
    assert "[used] raw" in text or "[derived] raw" in text, text
    assert " @ " not in text and "unresolved" not in text, text  # one repository, however it was spelled
    assert relative.provenance(calexp).nodes.keys() >= {raw.id, calexp.id}
