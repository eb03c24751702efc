"""The real MLflow UI, in headless Chromium, on the store that two real `dvc repro` runs wrote: the experiment opens
on its runs table, the run names say what differs, the compare view shows both runs' confusion matrices, and the
metric charts are drawn against the epoch.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver) and the `selenium`
package; skipped otherwise. The chromedriver path is given explicitly, so Selenium Manager never downloads anything.
Screenshots go to pytest's tmp dir and, when TEST_ARTIFACTS_DIR is set, are copied there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking import UI_WORKFLOW
from tests.helpers import FAST_PARAMS, edit_params, mlflow_server, run, sqlite_uri

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SERVER_START_TIMEOUT_S = 90  # `mlflow server` imports a lot and migrates the sqlite store on first start
PAGE_TIMEOUT_S = 60


@pytest.fixture
def ui_server(repo_copy: Path, tmp_path: Path):
    """`mlflow server` on repo_copy/mlflow.db. The runs' artifact URIs are file:// paths under repo_copy/mlartifacts,
    which the server reads directly; proxied uploads (new experiments only) go to the same folder."""
    with mlflow_server(
        sqlite_uri(repo_copy),
        repo_copy / "mlartifacts",
        tmp_path / "mlflow-server",
        SERVER_START_TIMEOUT_S,
    ) as base:
        yield base


@pytest.fixture
def browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1600,1400",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(
        service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("TEST_ARTIFACTS_DIR"):
        dest = Path(os.environ["TEST_ARTIFACTS_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / name)
        path = dest / name
    print(f"screenshot: {path}")
    return path


# The metrics section of the compare view is a react-virtualized grid: metric names in one grid, values in
# another, cells absolutely positioned. A metric's values are the cells of the other grid at the name cell's `top`,
# ordered by `left` (the column order of the runs in the "Run ID:" header).
METRIC_VALUES_JS = """
const cell = arguments[0].closest('.ReactVirtualized__Grid__innerScrollContainer > div');
if (!cell) return null;
const grid = cell.closest('.ReactVirtualized__Grid');
let scope = grid.parentElement;
while (scope && scope.querySelectorAll('.ReactVirtualized__Grid').length < 2) scope = scope.parentElement;
if (!scope) return null;
const values = [...scope.querySelectorAll('.ReactVirtualized__Grid')].find(g => g !== grid);
return [...values.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div')]
  .filter(c => c.style.top === cell.style.top)
  .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
  .map(c => c.innerText.trim());
"""


def metric_values(driver, metric: str) -> list[str] | None:
    from selenium.webdriver.common.by import By

    labels = driver.find_elements(By.XPATH, f"//a[normalize-space(text())='{metric}']")
    return driver.execute_script(METRIC_VALUES_JS, labels[0]) if labels else None


def shown_matches(shown: str, actual: float) -> bool:
    """The UI rounds metrics (3 significant digits, e.g. 0.914 or 7.500e-4): equal up to that rounding."""
    try:
        value = float(shown)
    except ValueError:
        return False
    return math.isclose(value, actual, rel_tol=5e-3, abs_tol=5e-4)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} missing (apt-get install chromium chromium-driver)")
@pytest.mark.skipif(not CHROMEDRIVER.is_file(), reason=f"{CHROMEDRIVER} missing (apt-get install chromium-driver)")
def test_mlflow_ui_lists_and_compares_two_pipeline_runs(repo_copy, tmp_path, request):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Two real pipeline runs into repo_copy/mlflow.db.
    run(["dvc", "repro"], repo_copy)
    edit_params(repo_copy, {"train.lr": 0.01})
    run(["dvc", "repro"], repo_copy)
    client = MlflowClient(sqlite_uri(repo_copy))
    experiment_id = client.get_experiment_by_name("digits").experiment_id
    runs = client.search_runs([experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    expected = {r.info.run_id: (r.info.run_name, r.data.metrics["test/accuracy"]) for r in runs}
    # Named after what differs from the committed params.yaml: the second run's learning rate.
    assert sorted(name for name, _ in expected.values()) == ["cnn", "cnn lr=0.01"]
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"

    # Only now the server and the browser (both fixtures are torn down even if anything below fails).
    base = request.getfixturevalue("ui_server")
    driver = request.getfixturevalue("browser")
    try:
        # The experiment page, as the stages' printed links open it, lands on the runs table. (MLflow 3.17 picks the
        # GenAI or model-training pages by a switch of its own, GenAI in a fresh browser, whatever the tag says.)
        driver.get(f"{base}/#/experiments/{experiment_id}?{UI_WORKFLOW}")

        def run_links(drv):
            found = {}
            for run_id in expected:
                links = drv.find_elements(By.CSS_SELECTOR, f"a[href$='/runs/{run_id}']")
                texts = [a.text.strip() for a in links if a.text.strip()]
                if not texts:
                    return False
                found[run_id] = texts
            return found

        try:
            links = WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.25).until(run_links)
        except TimeoutException:
            pytest.fail(
                "the experiment page did not list both runs; it shows:\n"
                + driver.find_element(By.TAG_NAME, "body").text[:3000]
            )
        for run_id, (name, _) in expected.items():
            assert name in links[run_id], (run_id, name, links[run_id])
        assert "/runs" in driver.current_url and "overview" not in driver.current_url, driver.current_url
        save_screenshot(driver, tmp_path, "mlflow_experiment.png")

        # A metric chart of a run: its x axis runs over the epochs (0, 1, 2), not the optimizer steps (~57).
        some_run = next(iter(expected))
        driver.get(f"{base}/#/experiments/{experiment_id}/runs/{some_run}/model-metrics?{UI_WORKFLOW}")
        last_epoch = FAST_PARAMS["train.max_epochs"] - 1
        # The page draws charts as they scroll into view, and the test and baseline bars come first: keep the
        # per-epoch loss charts only, with the page's own chart search.
        search = WebDriverWait(driver, PAGE_TIMEOUT_S).until(
            lambda drv: drv.find_element(By.CSS_SELECTOR, "input[placeholder*='Search metric charts']")
        )
        search.send_keys("loss")

        def x_ticks(drv):
            texts = drv.execute_script("return [...document.querySelectorAll('.xtick text')].map(t => t.textContent)")
            values = [float(t.replace("\u2212", "-")) for t in texts if t.strip()]
            return values if last_epoch in values else False

        try:
            ticks = WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.25).until(x_ticks)
        except TimeoutException:
            pytest.fail(
                "no metric chart with an x axis up to the last epoch; the page shows:\n"
                + driver.find_element(By.TAG_NAME, "body").text[:3000]
            )
        assert max(ticks) <= last_epoch, ticks
        driver.execute_script(  # the per-epoch charts in view, below the test metrics' bars
            "const t = [...document.querySelectorAll('.xtick text')].find(t => t.textContent === arguments[0]);"
            "t.scrollIntoView({block: 'center'});",
            str(last_epoch),
        )
        save_screenshot(driver, tmp_path, "mlflow_metric_charts.png")

        # The compare view of the two runs (the route the UI's own Compare button opens).
        run_ids = list(expected)
        driver.get(f"{base}/#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps([experiment_id])}")

        def accuracy_cells(drv):
            values = metric_values(drv, "test/accuracy")
            return values if values and len(values) == 2 and all(values) else False

        try:
            shown = WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.25).until(accuracy_cells)
        except TimeoutException:
            pytest.fail(
                "the compare view did not show test/accuracy for two runs; it shows:\n"
                + driver.find_element(By.TAG_NAME, "body").text[-3000:]
            )

        # Columns follow the "Run ID:" header; each shows its run's name and its test/accuracy.
        table = driver.find_element(By.CSS_SELECTOR, "table.mlflow-compare-run-table")
        header_ids = [a.text.strip() for a in table.find_elements(By.CSS_SELECTOR, "thead a[href*='/runs/']")]
        assert sorted(header_ids) == sorted(run_ids), header_ids
        name_row = table.find_element(By.XPATH, ".//tr[th[normalize-space(.)='Run Name:']]")
        names = [td.text.strip() for td in name_row.find_elements(By.TAG_NAME, "td")]
        assert names == [expected[run_id][0] for run_id in header_ids], names
        for run_id, text in zip(header_ids, shown, strict=True):
            accuracy = expected[run_id][1]
            assert shown_matches(text, accuracy), f"{run_id}: UI shows {text!r}, the store has {accuracy}"

        # A compact screenshot: only the parameters and tags that differ, the metrics table in view.
        for section in ("Parameters", "Tags"):
            for switch in driver.find_elements(By.CSS_SELECTOR, f"button[aria-label='{section} - Show diff only']"):
                if switch.get_attribute("aria-checked") != "true":
                    switch.click()
        WebDriverWait(driver, 10, poll_frequency=0.1).until(
            lambda drv: (
                drv.find_elements(By.XPATH, "//table//*[normalize-space(text())='train.lr']")
                and not drv.find_elements(By.XPATH, "//table//*[normalize-space(text())='train.seed']")
            )
        )
        label = driver.find_element(By.XPATH, "//a[normalize-space(text())='test/accuracy']")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", label)
        WebDriverWait(driver, 10, poll_frequency=0.1).until(accuracy_cells)
        save_screenshot(driver, tmp_path, "mlflow_compare.png")

        # The compare view's artifacts: the confusion matrix of each run, side by side.
        def confusion_entry(drv):
            found = drv.find_elements(By.XPATH, "//*[normalize-space(text())='confusion_matrix.png']")
            return found[0] if found else False

        entry = WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.25).until(confusion_entry)
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'}); arguments[0].click();", entry)

        def shown_images(drv):
            boxes = drv.execute_script(
                "return [...document.querySelectorAll('img')].filter(i => i.src.startsWith('blob:') && i.complete"
                " && i.naturalWidth > 0 && i.getBoundingClientRect().width > 100)"
                ".map(i => [i.src, Math.round(i.getBoundingClientRect().left)])"
            )
            return boxes if len({src for src, _ in boxes}) == 2 else False

        try:
            images = WebDriverWait(driver, PAGE_TIMEOUT_S, poll_frequency=0.25).until(shown_images)
        except TimeoutException:
            save_screenshot(driver, tmp_path, "mlflow_compare_artifacts.png")
            pytest.fail("the compare view did not show two confusion matrices")
        assert len({left for _, left in images}) == 2, images  # in two columns, one per run
        save_screenshot(driver, tmp_path, "mlflow_compare_artifacts.png")
    except BaseException:
        save_screenshot(driver, tmp_path, "mlflow_failure.png")
        raise
