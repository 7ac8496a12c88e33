"""Reports: a small real results set (digits, two methods, three seeds each) rendered to HTML and PDF."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from benchmark import report, runner
from tests.conftest import compose

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("results")
    for method, arch in (("bp", "mlp"), ("mf", "mlp")):
        job = compose(f"method={method}", f"arch={arch}", "arch.widths=[128]", "dataset=digits", "train.epochs=4",
                      f"results_dir={results_dir}", "experiment_name=report_test", "measure.emissions=true")
        for seed in (1, 2, 3):
            runner.execute(job, kind="final", seed=seed)
    out = tmp_path_factory.mktemp("report")
    made_up = [{"dataset": "digits", "arch": "mlp", "method": "mf", "test_accuracy": 0.90, "tolerance": 0.05,
                "source": "made up for the test"}]
    report.build(results_dir / "report_test", out, references=made_up)
    return out


def test_html_holds_each_method_the_ci_columns_and_the_significance_sentence(rendered):
    page = (rendered / "index.html").read_text()
    for method in ("bp", "mf"):
        assert f"<td>{method}</td>" in page
    assert "95% CI" in page and "<th>n</th>" in page
    assert "Welch's t-test" in page
    # Welch's p, or (4 epochs of digits may still be rising) the budget-limited sentence instead.
    assert re.search(r"mf vs BP on digits/mlp: [+-]\d+\.\d\d pp(, p=|, but the budget was too small to tell)", page)
    assert "<b>Budget: single runs of at most 4 epochs" in page
    assert "digits: 95.00%" in page  # the dataset's fixed target (configs/dataset/digits.yaml)
    assert "†" in page  # CodeCarbon's energy here is an estimate and is marked
    assert "Reproduction of published figures" in page and "made up for the test" in page
    assert "sha256" in page and "canonical: True" in page
    assert "src='http" not in page and 'src="http' not in page  # self-contained
    assert page.count("data:image/png;base64,") >= 4


def test_tables_and_figures_are_written_beside_the_report(rendered):
    for name in ("summary.csv", "significance.csv", "cost_to_target.csv", "performance_profiles.png",
                 "performance_profiles.svg", "learning_curves_digits.png", "acc_vs_energy_digits.svg"):
        assert (rendered / name).stat().st_size > 0, name


def test_the_summary_is_also_written_as_markdown_cell_for_cell(rendered):
    """summary.md (what a README quotes) holds the summary.csv's table, cell for cell."""
    import pandas as pd

    csv = pd.read_csv(rendered / "summary.csv", dtype=str, keep_default_na=False)
    lines = (rendered / "summary.md").read_text().splitlines()
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    assert cells[0] == list(csv.columns) and set(lines[1]) == {"|", "-"}
    assert cells[2:] == csv.values.tolist()


def test_pdf_has_pages_and_the_method_names(rendered):
    from pypdf import PdfReader

    pdf = PdfReader(rendered / "report.pdf")
    assert len(pdf.pages) >= 2
    text = " ".join(page.extract_text() for page in pdf.pages)
    assert "bp" in text and "mf" in text and "Welch" in text


def test_chromium_loads_the_html_without_console_errors_and_every_image_decodes(rendered):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it with apt-get)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((rendered / "index.html").as_uri())
        page.wait_for_load_state("load")
        decoded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert decoded and all(decoded)
    assert errors == []


def test_no_inf_nan_none_or_spurious_digits_reach_the_page(rendered):
    """Numbers print to what the seed noise supports: accuracies to 0.01 pp, costs to 3 significant
    figures; absent or unreached figures in words, never `inf`, `nan` or `None`."""
    page = (rendered / "index.html").read_text()
    text = re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)  # method notes: prose, not figures
    text = re.sub(r"src='data:[^']*'", "", text)
    body = text.split("<h2>Provenance</h2>")[0]  # provenance holds hashes and versions verbatim
    assert not re.search(r"\b(inf|-inf|nan|NaN|None)\b", body)
    for cell in re.findall(r"<td>(.*?)</td>", body, flags=re.S):
        for number in re.findall(r"\d[\d,]*\.?\d*", cell):
            digits = number.replace(",", "").replace(".", "").lstrip("0")
            assert len(digits) <= 4, f"{number!r} in a table cell has more digits than the rule ({cell!r})"
