"""Trace formats: native .npy (validated, chunked, memory-mapped), the text format both ways, the
pmemcheck importer (hand-made and real logs), detection by content; fuzzed readers raise only TraceError."""

from __future__ import annotations

import os
import re
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nvemu import TRACE_DTYPE, Hypervisor, Op, TraceError
from nvemu.formats.trace import (
    NpyTrace,
    NpyWriter,
    detect_format,
    format_text,
    id_extent,
    import_pmemcheck,
    load_npy,
    load_text,
    load_trace,
    open_trace,
    parse_pmemcheck,
    parse_text,
    save_npy,
    save_text,
    save_trace,
)

DATA = Path(__file__).parent / "data" / "trace"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "pmemcheck"
FUZZ = settings(max_examples=int(os.environ.get("NVEMU_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
G = 1 << 32          # where the vNVDIMM of every VM here sits
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared/samples/pmemcheck not present")


def rec(op, vm=0, vcpu=0, size=0, gpa=0, value=0):
    return (int(op), vcpu, vm, size, gpa, value)


def arr(*records) -> np.ndarray:
    return np.array(list(records), TRACE_DTYPE)


def small_vm(hv: Hypervisor, **kw):
    kw.setdefault("dram", 4 << 20)
    kw.setdefault("nvdimms", [2 << 20])
    return hv.create_vm(**kw).start()


# ---- text format ------------------------------------------------------------------------------

BASIC = arr(rec(Op.STORE, 0, 0, 8, G, 0x1122334455667788), rec(Op.STORE, 0, 1, 4, G + 0x40, 0xDEADBEEF),
            rec(Op.NT_STORE, 0, 1, 2, G + 0x48, 0xBEEF), rec(Op.CLWB, 0, 0, 0, G),
            rec(Op.CLFLUSHOPT, 0, 1, 64, G + 0x40), rec(Op.SFENCE), rec(Op.LOAD, 0, 0, 8, G),
            rec(Op.LOAD, 0, 0, 2, G + 0x44), rec(Op.STORE, 1, 1, 1, G + 0x1000, 255),
            rec(Op.CLFLUSH, 1, 1, 0, G + 0x1000),
            rec(Op.MFENCE, 1, 1), rec(Op.STORE, 0, 0, 8, G + (2 << 20), 1), rec(Op.SFENCE))


def test_text_grammar_gives_exact_records_and_line_numbers():
    records, lines = parse_text((DATA / "basic.txt").read_text().splitlines())
    assert records.tolist() == BASIC.tolist()
    assert lines.tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    assert np.array_equal(load_text(DATA / "basic.txt"), load_npy(DATA / "basic.npy"))   # the golden copy


def test_a_text_trace_streams_a_chunk_at_a_time_and_still_names_lines(tmp_path):
    """Issue 12 item 6: a text trace is parsed chunk by chunk as it is read (nothing holds the whole
    trace), yet every record still maps to its line, across comments, blank lines and chunk ends."""
    text = ["# a header", "", *format_text(BASIC[:5]), "# between", *format_text(BASIC[5:]), "", ""]
    (tmp_path / "t.txt").write_text("\n".join(text) + "\n")
    src = open_trace(tmp_path / "t.txt")
    assert src.records is None and len(src) == len(BASIC)
    chunks = list(src.chunks(4))
    assert [(first, len(c)) for first, c in chunks] == [(0, 4), (4, 4), (8, 4), (12, 1)]
    assert np.array_equal(np.concatenate([c for _, c in chunks]), BASIC)
    _, lines = parse_text(text)
    assert [src.stream.origin(i) for i in range(len(BASIC))] == lines.tolist()
    assert src.where(6) == f"record 6 (line {lines[6]})" and src.where(len(BASIC)) == f"record {len(BASIC)}"
    (tmp_path / "bad.txt").write_text("\n".join([*format_text(BASIC), "vm0 cpu0 LOAD"]) + "\n")
    with pytest.raises(TraceError, match=r"bad.txt line 14, field gpa: missing"):
        open_trace(tmp_path / "bad.txt")          # refused when opened, before anything replays


def test_text_and_npy_round_trip_through_files(tmp_path):
    save_text(tmp_path / "t.txt", BASIC)
    assert np.array_equal(load_text(tmp_path / "t.txt"), BASIC)
    assert save_trace(tmp_path / "t.npy", BASIC) == len(BASIC)
    assert np.array_equal(load_npy(tmp_path / "t.npy", mmap_mode=False), BASIC)
    lines = list(format_text(BASIC[:3]))
    assert lines == ["vm0 cpu0 STORE 0x100000000 8 0x1122334455667788", "vm0 cpu1 STORE 0x100000040 4 0xdeadbeef",
                     "vm0 cpu1 NT_STORE 0x100000048 2 0xbeef"]
    assert list(format_text(BASIC[3:6])) == ["vm0 cpu0 CLWB 0x100000000", "vm0 cpu1 CLFLUSHOPT 0x100000040 64",
                                             "vm0 cpu0 SFENCE"]


@pytest.mark.parametrize("line, field, message", [
    ("vm0 cpu0 FLUSH 0x100", "op", "'FLUSH' is not an operation"),
    ("vm0 cpu0", "op", "missing"),
    ("STORE 0x100 8", "value", "missing (STORE takes gpa size value)"),
    ("LOAD", "gpa", "missing"),
    ("STORE 0x10g 8 1", "gpa", "'0x10g' is not a number"),
    ("STORE 0x100 three 1", "size", "'three' is not a number"),
    ("STORE 0x100 3 1", "size", "size 3 is not valid for STORE"),
    ("LOAD 0x100 16", "size", "size 16 is not valid for LOAD"),
    ("CLWB 0x100 8", "size", "size 8 is not valid for CLWB"),
    ("STORE 0x13c 8 1", "gpa", "crosses a 64-byte line"),
    ("STORE 0x100 1 0x100", "value", "does not fit a 1-byte STORE"),
    ("STORE 0x10000000000000000 8 1", "gpa", "does not fit 64 bits"),
    ("vm65536 LOAD 0x100", "vm", "does not fit 16 bits"),
    ("vm0 cpu256 LOAD 0x100", "cpu", "does not fit 8 bits"),
    ("SFENCE 0x100", "-", "unexpected '0x100': SFENCE takes no operands"),
    ("LOAD 0x100 8 9", "-", "unexpected '9'"),
    ("cpu1 vm0 LOAD 0x100", "op", "'vm0' is not an operation"),
])
def test_bad_text_lines_name_line_and_field(line, field, message):
    with pytest.raises(TraceError) as info:
        parse_text(["# fine", "SFENCE", "", line], source="t.txt")
    text = str(info.value)
    assert text.startswith(f"t.txt line 4, field {field}: ")
    assert message in text and "\n" not in text


def test_text_writer_refuses_records_it_cannot_express():
    for bad, field in [(rec(Op.SFENCE, gpa=0x40), "gpa"), (rec(Op.LOAD, size=8, value=3), "value"),
                       (rec(9), "op"), (rec(Op.STORE, size=8, gpa=0x3c), "gpa"), (rec(Op.CLWB, value=1), "value")]:
        with pytest.raises(TraceError, match=rf"^record 1, field {field}: "):
            list(format_text(arr(rec(Op.SFENCE), bad)))


records_strategy = st.one_of(
    st.tuples(st.sampled_from([Op.LOAD, Op.STORE, Op.NT_STORE]), st.sampled_from([1, 2, 4, 8]),
              st.integers(0, (1 << 58) - 1), st.integers(0, 63), st.integers(0, (1 << 64) - 1))
    .map(lambda t: (t[0], t[1], t[2] * 64 + min(t[3], 64 - t[1]), 0 if t[0] == Op.LOAD else t[4] >> (64 - 8 * t[1]))),
    st.tuples(st.sampled_from([Op.CLWB, Op.CLFLUSHOPT, Op.CLFLUSH]), st.sampled_from([0, 64]),
              st.integers(0, (1 << 64) - 1), st.just(0)),
    st.tuples(st.sampled_from([Op.SFENCE, Op.MFENCE]), st.just(0), st.just(0), st.just(0)))


@FUZZ
@given(st.lists(st.tuples(records_strategy, st.integers(0, 65535), st.integers(0, 255)), max_size=40))
def test_text_round_trip_is_exact_for_every_valid_record(items):
    records = arr(*[(int(op), vcpu, vm, size, gpa, value) for (op, size, gpa, value), vm, vcpu in items])
    back, _ = parse_text(list(format_text(records)))
    assert back.tolist() == records.tolist()


# ---- native .npy ------------------------------------------------------------------------------

def test_npy_chunks_are_separate_read_only_mappings(tmp_path):
    records = np.zeros(10_000, TRACE_DTYPE)
    records["gpa"] = np.arange(10_000)
    save_npy(tmp_path / "t.npy", records)
    t = NpyTrace(tmp_path / "t.npy")
    seen = []
    for start, chunk in t.chunks(3000):
        assert not chunk.flags.writeable and chunk.base is not None
        seen.append((start, len(chunk), int(chunk["gpa"][0])))
    assert seen == [(0, 3000, 0), (3000, 3000, 3000), (6000, 3000, 6000), (9000, 1000, 9000)]
    assert [len(c) for _, c in t.chunks(4000, start=1000, stop=9500)] == [4000, 4000, 500]
    assert np.array_equal(t.array(), records)
    assert id_extent(c for _, c in t.chunks(777)) == (0, 0)


def test_npy_writer_streams_chunks_and_patches_the_count(tmp_path):
    with NpyWriter(tmp_path / "w.npy") as w:
        for k in range(5):
            w.write(np.full(1000 + k, k, TRACE_DTYPE))
    loaded = np.load(tmp_path / "w.npy")                  # numpy itself agrees
    assert len(loaded) == 5010 and loaded["gpa"][-1] == 4 and len(NpyTrace(tmp_path / "w.npy")) == 5010
    save_npy(tmp_path / "e.npy", np.zeros(0, TRACE_DTYPE))
    assert len(NpyTrace(tmp_path / "e.npy")) == 0 and list(NpyTrace(tmp_path / "e.npy").chunks()) == []


def test_id_extent_reads_the_highest_vm_and_vcpu():
    records = arr(rec(Op.SFENCE, vm=3, vcpu=1), rec(Op.SFENCE, vm=0, vcpu=200), rec(Op.SFENCE, vm=65535, vcpu=0))
    assert id_extent([records[:1], records[1:]]) == (65535, 200)
    assert id_extent([]) == (-1, -1)


def _npy_bytes(records: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        save_npy(Path(d) / "x.npy", records)
        return (Path(d) / "x.npy").read_bytes()


@pytest.mark.parametrize("make, message", [
    (lambda good: good[:-30], (r"truncated: the header promises 10 records, the file holds 8 whole records "
                               r"\(record 8 is cut short\)")),
    (lambda good: good[:60], "the header is cut short"),
    (lambda good: good + b"\0" * 24, "24 bytes follow the 10 records"),
    (lambda good: b"\x93NOTNPY" + good[7:], "does not start with the .npy magic"),
    (lambda good: good[:6] + b"\x07\x00" + good[8:], "unknown format version 7.0"),
    (lambda good: good.replace(b"'<u8'), ('value'", b"'>u8'), ('value'"), "field 'gpa' is >u8, expected <u8"),
    (lambda good: good.replace(b"('vm', '<u2')", b"('vn', '<u2')"), "field 'vm' is missing"),
    (lambda good: good.replace(b"(10,)", b"(5,2)"), r"shape \(5, 2\): a trace is one-dimensional"),
    (lambda good: good.replace(b"'fortran_order'", b"'fortran_ordex'"), "not the dict of descr"),
    (lambda good: good.replace(b"{'descr'", b"{'descr]"), "unreadable header"),
])
def test_bad_npy_files_raise_trace_error_before_any_replay(tmp_path, make, message):
    good = _npy_bytes(np.zeros(10, TRACE_DTYPE))
    (tmp_path / "bad.npy").write_bytes(make(good))
    with pytest.raises(TraceError, match=message):
        NpyTrace(tmp_path / "bad.npy")
    with pytest.raises(TraceError, match=message if "magic" not in message else "not a text trace"):
        open_trace(tmp_path / "bad.npy")                    # without the magic it is no npy file at all


def test_wrong_dtype_array_names_the_field():
    with pytest.raises(TraceError, match="field 'size' is <u2, expected <u4"):
        open_trace(np.zeros(3, [("op", "u1"), ("vcpu", "u1"), ("vm", "<u2"), ("size", "<u2"), ("gpa", "<u8"),
                                ("value", "<u8")]))
    with pytest.raises(TraceError, match="cannot read"):
        open_trace("/nonexistent/trace.npy")


# ---- detection by content -------------------------------------------------------------------------

def test_formats_are_recognised_by_content_not_name(tmp_path):
    (tmp_path / "a.log").write_bytes((DATA / "basic.npy").read_bytes())
    (tmp_path / "b.npy").write_text((DATA / "basic.txt").read_text())
    (tmp_path / "c.txt").write_text((DATA / "two_files.log").read_text())
    (tmp_path / "d").write_text("START|FENCE|STOP\n")
    (tmp_path / "e").write_text("==1== pmemcheck-3.20 banner\n==1== START|STOP\n")
    (tmp_path / "f").write_text("# START|FENCE\nSFENCE\n")
    assert [detect_format(tmp_path / n) for n in ("a.log", "b.npy", "c.txt", "d", "e", "f")] == \
        ["npy", "text", "pmemcheck", "pmemcheck", "pmemcheck", "text"]
    assert np.array_equal(load_trace(tmp_path / "a.log"), load_trace(tmp_path / "b.npy"))
    assert len(load_trace(tmp_path / "c.txt", nvdimm_gpa=G, nvdimm_size=1 << 20)) == 9


# ---- pmemcheck --------------------------------------------------------------------------------------

def test_hand_made_log_places_files_splits_stores_and_expands_flushes():
    imp = import_pmemcheck(DATA / "two_files.log", G, 2 << 20)
    a, b = G, G + 0x2000                                     # file a (8 KiB) first, then file b
    assert [(f.name, f.gpa, f.size) for f in imp.files] == [("/mnt/pmem/a", a, 0x2000), ("/mnt/pmem/b", b, 0x1000)]
    assert imp.records.tolist() == [
        rec(Op.SFENCE),
        rec(Op.STORE, size=4, gpa=a + 0x103C, value=0x44332211),       # the 8-byte store crossing a line...
        rec(Op.STORE, size=4, gpa=a + 0x1040, value=0x88776655),       # ... in two pieces
        rec(Op.STORE, size=2, gpa=a + 0x1044, value=0xABCD),           # 2nd mapping of a: the same bytes
        rec(Op.STORE, size=1, gpa=b, value=7),                         # stack frame fields ignored
        rec(Op.CLWB, gpa=a + 0x1000), rec(Op.CLWB, gpa=a + 0x1040),    # FLUSH of 0x20 bytes over two lines
        rec(Op.CLWB, gpa=b),                                           # odd-length FLUSH inside one line
        rec(Op.SFENCE)]                                                # (the empty FLUSH gave nothing)
    assert imp.origin.tolist() == [1, 6, 6, 7, 8, 9, 9, 11, 12]
    assert imp.markers == [(1, "tx.BEGIN"), (9, "tx.END")] and imp.log_records == 13 and imp.skipped == 0

    hv = Hypervisor("small")
    vm = small_vm(hv)
    hv.run(imp.records)
    assert vm.read(a + 0x103C, 10) == bytes.fromhex("1122334455667788cdab")
    assert vm.read(b, 1) == b"\x07"
    assert len(hv.platform.line_states()) == 3               # the three flushed lines sit in WPQs


def test_range_flushes_expand_a_chunk_at_a_time(tmp_path):
    """Issue 12: a 300-byte log of three 64 MiB range FLUSHes (3 M write-backs) is imported a chunk
    at a time: no more than a few chunks in memory at once, every line written back in order, and
    errors still name the log record (found before anything replays)."""
    mib64 = 64 << 20
    log = tmp_path / "range.log"
    log.write_text(f"==7== START|REGISTER_FILE;/mnt/pmem/pool;0x10000000;{mib64:#x};0x0|STORE;0x10000008;0x1;0x8|"
                   f"FLUSH;0x10000000;{mib64:#x}|FENCE|tx.BEGIN|FLUSH;0x10000020;{mib64 - 0x20:#x}|"
                   f"FLUSH;0x10000000;{mib64:#x}|FENCE|STOP\n")
    tracemalloc.start()
    try:
        src = open_trace(log, nvdimm_gpa=G, nvdimm_size=mib64)
        sizes, lines, seen = [], mib64 // 64, 0
        for start, chunk in src.chunks(1 << 16):
            assert start == seen
            sizes.append(len(chunk))
            seen += len(chunk)
            if start == 0:
                assert chunk[:3].tolist() == [rec(Op.STORE, size=8, gpa=G + 8, value=1), rec(Op.CLWB, gpa=G),
                                              rec(Op.CLWB, gpa=G + 64)]
            if start <= lines + 1 < start + len(chunk):                  # the fence after the first flush
                assert chunk[lines + 1 - start].tolist() == rec(Op.SFENCE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == len(src) == 1 + 3 * lines + 2 and max(sizes) == 1 << 16
    assert peak < 24 << 20, f"{peak / 2**20:.0f} MiB for a 3 M-record import"
    assert src.pmemcheck.markers == [(lines + 2, "tx.BEGIN")] and src.pmemcheck.log_records == 8
    assert src.where(lines + 2 + lines // 2) == f"record {lines + 2 + lines // 2} (pmemcheck record 6)"
    log.write_text(log.read_text().replace("|FENCE|STOP", "|FENCE|BOGUS|STOP"))
    with pytest.raises(TraceError, match=r"pmemcheck record 9 \(line 1\), field record: unknown record 'BOGUS'"):
        open_trace(log, nvdimm_gpa=G, nvdimm_size=mib64)


def test_deep_flush_option_writes_the_vfha_after_each_flushing_fence():
    log = ("START|REGISTER_FILE;/f;0x1000;0x1000;0x0|STORE;0x1000;0x5;0x8|FENCE|FLUSH;0x1000;0x8|FENCE|FENCE|"
           "STOP")
    hv = Hypervisor("small")
    vm = small_vm(hv)
    imp = parse_pmemcheck(log, G, 2 << 20, deep_flush=vm.vfha_gpa)
    assert imp.records["op"].tolist() == [Op.STORE, Op.SFENCE, Op.CLWB, Op.SFENCE, Op.STORE, Op.SFENCE, Op.SFENCE]
    assert imp.records[4]["gpa"] == vm.vfha_gpa
    hv.run(imp.records)
    hpa = vm.gpa_to_hpa(G)
    assert hv.platform.read_media(hpa, 8) == (5).to_bytes(8, "little")       # durable on media
    assert vm.stats().exits[48] == 1 and vm.stats()["lines_drained"] == 1


@pytest.mark.parametrize("store, pieces", [
    ("STORE;0x103d;0x8877665544332211;0x8",
     [(0x3D, 2, 0x2211), (0x3F, 1, 0x33), (0x40, 4, 0x77665544), (0x44, 1, 0x88)]),
    ("STORE;0x103e;0xbbaa;0x2", [(0x3E, 2, 0xBBAA)]),
    ("STORE;0x103f;0xbbaa;0x2", [(0x3F, 1, 0xAA), (0x40, 1, 0xBB)]),
    ("STORE;0x1039;0x332211;0x3", [(0x39, 2, 0x2211), (0x3B, 1, 0x33)]),
])
def test_stores_crossing_a_line_split_into_aligned_pieces(store, pieces):
    imp = parse_pmemcheck(f"START|REGISTER_FILE;/f;0x1000;0x1000;0x0|{store}|STOP", G, 1 << 20)
    assert [(int(r["gpa"]) - G, int(r["size"]), int(r["value"])) for r in imp.records] == pieces


def test_unregistered_addresses_raise_or_are_skipped():
    log = "START|REGISTER_FILE;/f;0x1000;0x1000;0x0|STORE;0x1ffc;0x1;0x8|FLUSH;0x5000;0x40|STORE;0x1000;0x1;0x1|STOP"
    with pytest.raises(TraceError, match=r"pmemcheck record 2 \(line 1\), field addr: \[0x1ffc, 0x2004\) is not "
                                         r"inside any file"):
        parse_pmemcheck(log, G, 1 << 20)
    imp = parse_pmemcheck(log, G, 1 << 20, unregistered="skip")
    assert imp.skipped == 2 and imp.records.tolist() == [rec(Op.STORE, size=1, gpa=G, value=1)]


def test_a_flush_running_past_a_registered_file_writes_back_the_lines_it_overlaps():
    """libpmem flushes whole lines: a file of 0x1010 bytes has its last line, [0x1000, 0x1040) of
    the file, flushed whole, and pmemcheck logs the range the program passed (issue 16, item 8)."""
    log = ("START|REGISTER_FILE;/f;0x10000;0x1010;0x0|STORE;0x11008;0x1;0x8|FLUSH;0x11000;0x40|"
           "FLUSH;0x10fc0;0x80|FLUSH;0x20000;0x40|FENCE|STOP")
    with pytest.raises(TraceError, match=r"record 5 .*field addr: \[0x20000, 0x20040\) is not inside"):
        parse_pmemcheck(log, G, 1 << 20)                      # wholly outside: still unregistered
    imp = parse_pmemcheck(log, G, 1 << 20, unregistered="skip")
    assert imp.skipped == 1
    assert imp.records.tolist() == [rec(Op.STORE, size=8, gpa=G + 0x1008, value=1),
                                    rec(Op.CLWB, gpa=G + 0x1000),                      # past the end
                                    rec(Op.CLWB, gpa=G + 0xFC0), rec(Op.CLWB, gpa=G + 0x1000),
                                    rec(Op.SFENCE)]


@needs_samples
def test_real_log_of_an_odd_sized_file_imports_with_its_last_line_flushed():
    """ex_pmem_simple_copy.log with its pool registered as a 4,000-byte file, what pmem_map_file
    registers for a file of that length: simple_copy's FLUSH of 0x1000 bytes then runs 96 bytes
    past the file; before item 8 of issue 16 the importer refused the whole log."""
    text = (SAMPLES / "ex_pmem_simple_copy.log").read_text()
    odd = text.replace("REGISTER_FILE;/mnt/pmem/simple_copy.dst;0x5200000;0x1000;0x0",
                       "REGISTER_FILE;/mnt/pmem/simple_copy.dst;0x5200000;0xfa0;0x0")
    assert odd != text and "FLUSH;0x5200000;0x1000" in odd
    imp = parse_pmemcheck(odd, G, 2 << 20, unregistered="skip")
    flushed = imp.records[imp.records["op"] == Op.CLWB]["gpa"] - G
    assert flushed.tolist() == list(range(0, 0xFC0, 64)) and imp.files[0].size == 0xFA0
    assert imp.skipped == 12          # the 12 stores past byte 4,000 belong to no registered file


@pytest.mark.parametrize("record, field, message", [
    ("STORE;0x1000;0x1", "-", "STORE needs ADDR;VALUE;SIZE"),
    ("STORE;0x1000;0xzz;0x8", "value", "'0xzz' is not a hex number"),
    ("STORE;0x1000;0x1;0x10", "size", "a 16-byte store"),
    ("STORE;0x1000;0x1;0x0", "size", "a 0-byte store"),
    ("STORE;0x1000;0x1ff;0x1", "value", "0x1ff does not fit 1 bytes"),
    ("STORE;0x10000000000000000;0x1;0x1", "addr", "does not fit 64 bits"),
    ("FLUSH;0x1000", "-", "FLUSH needs ADDR;SIZE"),
    ("FENCE;1", "-", "FENCE takes no fields"),
    ("LOAD;0x1000;0x8", "record", "unknown record 'LOAD'"),
    ("REGISTER_FILE;/g;0x9000", "-", "REGISTER_FILE needs PATH;ADDR;SIZE;OFFSET"),
    ("REGISTER_FILE;/g;0x9000;0x1000000;0x0", "size", "file /g needs 0x1000000 bytes at vNVDIMM offset 0x1000"),
])
def test_malformed_pmemcheck_records_name_record_line_and_field(record, field, message):
    log = f"==7== START|REGISTER_FILE;/f;0x1000;0x1000;0x0|FENCE\n{record}|STOP\n"
    with pytest.raises(TraceError) as info:
        parse_pmemcheck(log, G, 1 << 20, source="x.log")
    assert str(info.value).startswith(f"x.log pmemcheck record 3 (line 2), field {field}: ")
    assert message in str(info.value)


def test_a_log_without_start_is_refused():
    with pytest.raises(TraceError, match="no START record"):
        parse_pmemcheck("STORE;0x1000;0x1;0x8|STOP")


@needs_samples
def test_real_simple_copy_log_replays_to_the_copied_bytes_and_with_deep_flush_to_media():
    log = SAMPLES / "ex_pmem_simple_copy.log"
    stores = [r.split(";") for r in log.read_text().split("|") if r.startswith("STORE;")]
    expected = b"".join(int(v, 16).to_bytes(int(s, 16), "little") for _, a, v, s in stores)
    assert len(expected) == 4096 and [int(a, 16) for _, a, _, _ in stores] == list(range(0x5200000, 0x5201000, 8))

    hv = Hypervisor("small")
    vm = small_vm(hv)
    imp = import_pmemcheck(log, G, 2 << 20, deep_flush=vm.vfha_gpa)
    # 512 stores, one FLUSH of 4 KiB -> 64 CLWBs, 88 FENCEs, one deep flush after the flushing fence
    assert np.bincount(imp.records["op"], minlength=8).tolist() == [0, 513, 0, 64, 0, 0, 89, 0]
    hv.run(imp.records)
    assert vm.read(G, 4096) == expected
    assert hv.platform.read_media(vm.gpa_to_hpa(G), 4096) == expected
    # the 4 KiB sit in one interleave granule, one controller whose WPQ (depth 8 on "small") drained 56
    # lines on its own as the CLWBs came; the vFHA write drained the last 8
    assert vm.stats()["lines_drained"] == 8 and vm.stats().exits[48] == 1
    assert sum(c["drained"] for c in hv.platform.controller_stats()) == 64


@needs_samples
def test_real_queue_log_maps_one_file_twice_onto_the_same_guest_bytes():
    imp = import_pmemcheck(SAMPLES / "ex_obj_queue_enqueue.log", G, 16 << 20)
    assert [(f.name, f.gpa, f.size) for f in imp.files] == [("/mnt/pmem/queue.pool", G, 0x800000)]
    first = imp.records[imp.records["op"] == Op.STORE][:2]      # via 0x483cfc8 and 0x483cff0, the 4 KiB mapping
    assert first[["size", "gpa", "value"]].tolist() == [(1, G + 0xFC8, 1), (8, G + 0xFF0, 0xC00000001)]
    # the last store is to 0x5200ff0: the 8 MiB mapping of the same file offset 0xff0
    assert imp.records[imp.records["op"] == Op.STORE][-1][["size", "gpa"]].tolist() == (8, G + 0xFF0)
    # "FLUSH;0x483c000;0xff8" (an odd length) gives one CLWB per line it touches: 64
    flushes = imp.records[imp.origin == imp.origin[np.flatnonzero(imp.records["op"] == Op.CLWB)[2]]]
    assert len(flushes) == 64 and flushes["gpa"].tolist() == list(range(G, G + 4096, 64))
    hv = Hypervisor("small")
    vm = small_vm(hv, nvdimms=[8 << 20], dram=1 << 20)
    hv.run(imp.records)
    assert vm.read(G + 0xFF0, 8) == (0).to_bytes(8, "little") and vm.read(G + 0xFC8, 1) == b"\x00"


@needs_samples
def test_real_markers_log_keeps_pmreorder_markers():
    imp = import_pmemcheck(SAMPLES / "markers_pm_basic.log", G, 1 << 20)
    names = [m for _, m in imp.markers]
    assert len(names) == 44 and names[:2] == ["pmem_memcpy_persist.BEGIN", "libpmem.BEGIN"]
    assert names.count("libpmem.BEGIN") == names.count("libpmem.END") == 11
    assert all(0 <= i <= len(imp.records) for i, _ in imp.markers)
    assert np.bincount(imp.records["op"], minlength=8)[[1, 6]].tolist() == [7762, 1069]


# ---- fuzzing: mutated inputs raise TraceError or succeed ------------------------------------------------

def _mutate(data: bytes, draw) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if kind == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and buf:
            buf[pos] = draw(st.sampled_from(b"|;\n#0x9fF-.: \x00\xff" + bytes([draw(st.integers(0, 255))])))
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del buf[pos:pos + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "dup":
            end = pos + draw(st.integers(1, 40))
            buf[pos:pos] = buf[pos:end]
    return bytes(buf)


def _fuzz_file(data: bytes, name: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"nvemu-fuzz-{os.getpid()}-{name}"
    path.write_bytes(data)
    return path


@FUZZ
@given(st.data())
def test_fuzzed_text_traces_raise_only_trace_error(data):
    mutated = _mutate((DATA / "basic.txt").read_bytes(), data.draw)
    path = _fuzz_file(mutated, "t.txt")
    try:
        records = load_text(path)
    except TraceError as e:
        assert "\n" not in str(e) and re.search(r"line \d+, field |not a text trace", str(e))
        return
    assert records.dtype == TRACE_DTYPE


@FUZZ
@given(st.data())
def test_fuzzed_npy_files_raise_only_trace_error(data):
    mutated = _mutate((DATA / "basic.npy").read_bytes(), data.draw)
    path = _fuzz_file(mutated, "t.npy")
    try:
        t = NpyTrace(path)
        total = sum(len(c) for _, c in t.chunks(5))
    except TraceError:
        return
    assert total == len(t) and len(load_npy(path)) == len(t)


PMEM_SEED = (DATA / "two_files.log").read_bytes()


@FUZZ
@given(st.data())
def test_fuzzed_pmemcheck_logs_raise_only_trace_error(data):
    mutated = _mutate(PMEM_SEED, data.draw)
    try:
        imp = parse_pmemcheck(mutated.decode("utf-8", "replace"), G, 1 << 20,
                              unregistered=data.draw(st.sampled_from(["error", "skip"])))
    except TraceError:
        return
    assert len(imp.records) == len(imp.origin)
    assert ((imp.records["gpa"] >= G) & (imp.records["gpa"] < G + (1 << 20)) | (imp.records["op"] == Op.SFENCE)).all()


@FUZZ
@given(st.data())
def test_fuzzed_files_of_any_format_open_or_raise_trace_error(data):
    seed = data.draw(st.sampled_from([DATA / "basic.txt", DATA / "basic.npy", DATA / "two_files.log"]))
    path = _fuzz_file(_mutate(seed.read_bytes(), data.draw), "any")
    try:
        src = open_trace(path, nvdimm_gpa=G, nvdimm_size=1 << 20)
    except TraceError:
        return
    assert sum(len(c) for _, c in src.chunks(4)) == len(src)
