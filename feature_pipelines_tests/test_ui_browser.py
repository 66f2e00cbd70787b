"""Verified in a real browser (issue 10): what a user sees of a feature in the Dagster UI.

A small project (one feature, `card_spend`, with a validator on `amount`) gets three runs in its own Dagster
home: 2024-01-01…05, then 2024-01-06 whose source has negative amounts (the blocking check fails, nothing is
written), then 2024-01-07…10 (amounts on 2024-01-10 are ten times larger: the drift check warns). `dg dev`
serves it on a free loopback port and headless Debian chromium, driven by Selenium through the system
chromedriver (selenium-manager never downloads anything), reads the pages a user would open:

- the asset page: the semantic version of the latest materialization (metadata `version`), the column
  descriptions with their stored dtypes (`dagster/column_schema`) and the statistics (`entities`,
  `amount_sum_7d mean`), each compared with what the offline store holds;
- the Partitions tab: the bad day failed and is not materialized, a good day carries its own version;
- the Checks tab: the validator is a blocking check; its execution history and its per-partition view show
  it failed on 2024-01-06 and passed on every materialized day; `drift` is a non-blocking check that warned
  about 2024-01-10;
- lineage: the source asset `sources/card_events` is upstream of the feature (asset page and lineage graph).

Screenshots (and each page's HTML) go to $FEATURE_PIPELINES_SCREENSHOTS if set, else to a folder under
pytest's tmp_path; the path is printed (`-rA` or `-s` shows it on success). The test skips only when
/usr/bin/chromium or /usr/bin/chromedriver is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from feature_pipelines_tests.ui_browser import (
    BAD_DAY,
    CHROMEDRIVER,
    CHROMIUM,
    DRIFT_DAY,
    FEATURE,
    RUNS,
    SOURCE,
    chromium,
    dg_dev,
    make_project,
    materialize,
)

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium chromium-driver",
)

CHECK = "amount__greater_than_or_equal"
WAIT = 90  # seconds: a liveness bound for a page to show something, not a speed target


def _days(first: str, last: str) -> list[str]:
    from datetime import date, timedelta

    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


GOOD_DAYS = [d for first, last in RUNS if first != BAD_DAY for d in _days(first, last)]
LATEST = GOOD_DAYS[-1]  # the newest materialization: the asset page's metadata is this partition's


def _literal(text: str) -> str:
    """An XPath string literal for any text."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


class Browser:
    """The pages of one `dg dev`, read the way a person reads them: by visible text, with screenshots."""

    def __init__(self, driver, base: str, shots: Path):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.base, self.shots = driver, base, shots
        self._by, self._ec, self._wait = By, ec, WebDriverWait
        self._n = 0

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def shot(self, name: str, scroll_to=None) -> Path:
        """A screenshot (and the page's HTML) named in order of the walk; `scroll_to` an element first."""
        if scroll_to is not None:
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", scroll_to)
        self._n += 1
        path = self.shots / f"{self._n:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        path.with_suffix(".html").write_text(self.driver.page_source)
        return path

    def until(self, condition, what: str, timeout: float = WAIT):
        from selenium.common.exceptions import TimeoutException

        try:
            return self._wait(self.driver, timeout, poll_frequency=0.5).until(condition)
        except TimeoutException:
            shot = self.shot("timeout")
            raise AssertionError(f"{what}: not shown within {timeout:.0f} s on {self.driver.current_url} (see {shot})") from None

    def element(self, xpath: str, what: str, timeout: float = WAIT):
        return self.until(self._ec.visibility_of_element_located((self._by.XPATH, xpath)), what, timeout)

    def text(self, text: str, timeout: float = WAIT):
        """A visible element one of whose own text nodes contains `text` (a link inside a sentence splits it)."""
        return self.element(f"//*[text()[contains(normalize-space(.), {_literal(text)})]]", repr(text), timeout)

    def exact(self, text: str, within: str = "", timeout: float = WAIT):
        """A visible element whose whole text is `text` (under the `within` XPath, if given)."""
        return self.element(f"{within}//*[normalize-space(.)={_literal(text)}][not(*[normalize-space(.)={_literal(text)}])]",
                            repr(text), timeout)

    def click(self, text: str, within: str = "", tag: str = "*") -> None:
        element = self.until(self._ec.element_to_be_clickable(
            (self._by.XPATH, f"{within}//{tag}[normalize-space(.)={_literal(text)}]")), f"clickable {text!r}")
        element.click()

    def click_item(self, label: str) -> None:
        """Click the list item labelled `label` (a partition in a partition list: its label is also its title)."""
        element = self.until(self._ec.element_to_be_clickable((self._by.XPATH, f"//*[@title={_literal(label)}]")), f"list item {label!r}")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()

    def metadata(self, key: str, within: str = ""):
        """The metadata table row whose first cell is `key`, and its value: the last non-empty cell (the asset page
        has key, timestamp, value; a partition's page key, value and an empty cell)."""
        row = self.element(f"{within}//tr[td[1][normalize-space(.)={_literal(key)}]]", f"metadata row {key!r}")
        cells = [c.text.strip() for c in row.find_elements(self._by.TAG_NAME, "td")[1:]]
        return row, next((c for c in reversed(cells) if c), "")

    def body(self) -> str:
        return self.driver.find_element(self._by.TAG_NAME, "body").text


@pytest.fixture()
def screenshots(tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    """$FEATURE_PIPELINES_SCREENSHOTS, else tmp_path/screenshots; its path goes to the terminal even under -q."""
    folder = Path(os.environ.get("FEATURE_PIPELINES_SCREENSHOTS") or tmp_path / "screenshots").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nscreenshots of the Dagster UI: {folder}")
    return folder


def test_the_dagster_ui_shows_version_columns_checks_statistics_and_lineage(tmp_path: Path, screenshots: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is not installed: it belongs to the `test` extra (pip install -e '.[test]')")
    from feature_pipelines.store import LocalStore

    project = make_project(tmp_path / "shop")
    monkeypatch.setenv("DAGSTER_HOME", str(project.home))  # the runs and `dg dev` share this instance
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)  # the batching storage sets it on load: undone after the test
    assert materialize(project) == [first != BAD_DAY for first, _ in RUNS]
    store = LocalStore(project.root / "store")
    version = store.latest(FEATURE)["version"]
    latest = store.read(FEATURE, partitions=[LATEST])

    with dg_dev(project) as base, chromium() as driver:
        ui = Browser(driver, base, screenshots)
        try:
            _asset_page(ui, version, latest)
            _partitions(ui, version)
            _checks(ui)
            _lineage(ui)
        except BaseException as error:
            ui.shot("failure")
            error.add_note(f"screenshots of the Dagster UI: {screenshots}; dg dev's log: {project.root / 'dg_dev.log'}")
            raise


def _asset_page(ui: Browser, version: str, latest) -> None:
    """Overview: the latest materialization's version, its described columns with stored dtypes, its statistics."""
    ui.open(f"/assets/{FEATURE}")
    ui.text("What a card holder spent", timeout=180)  # the code location may still be loading
    columns = "//*[normalize-space(text())='Columns']/ancestor::*[.//table][1]"
    description = ui.text("sum of amount over [t - 7d, t), t = feature_timestamp")
    row = description.find_element(ui._by.XPATH, "./ancestor::tr[1]")
    cells = [c.text.strip() for c in row.find_elements(ui._by.TAG_NAME, "td")]
    # The stored dtype (Float64) proves this is the materialization's schema, not only the definition's.
    assert cells == ["amount_sum_7d", "Float64", "sum of amount over [t - 7d, t), t = feature_timestamp"], cells
    assert "entity key (customer)" in ui.body()
    ui.shot("asset-overview-columns", scroll_to=ui.element(columns, "the Columns section"))

    row, shown = ui.metadata("version")
    assert shown == version == "1.0.0", (shown, version)
    _, partition = ui.metadata("partition")
    assert partition == LATEST, partition  # the metadata shown is the latest materialization's
    ui.shot("asset-overview-version", scroll_to=row)

    row, entities = ui.metadata("entities")
    assert int(entities) == latest["customer_id"].n_unique(), entities
    _, mean = ui.metadata("amount_sum_7d mean")
    assert float(mean) == pytest.approx(latest["amount_sum_7d"].mean(), rel=1e-9), mean
    _, p95 = ui.metadata("amount_sum_7d p95")
    assert float(p95) > float(mean)
    ui.shot("asset-overview-statistics", scroll_to=row)


def _partitions(ui: Browser, version: str) -> None:
    """Partitions tab: the bad day failed and holds nothing; a good day carries its own version and statistics."""
    ui.open(f"/assets/{FEATURE}?view=partitions")
    ui.text(f"Materialized ({len(GOOD_DAYS)})")
    ui.text("Failed (1)")
    ui.open(f"/assets/{FEATURE}?view=partitions&partition={BAD_DAY}")
    ui.text("failed, and did not materialize this asset")
    ui.shot(f"partition-{BAD_DAY}-failed")
    day = GOOD_DAYS[2]
    ui.open(f"/assets/{FEATURE}?view=partitions&partition={day}")
    row, shown = ui.metadata("version")
    assert shown == version, shown
    assert ui.metadata("partition")[1] == day
    assert int(ui.metadata("entities")[1]) > 0
    ui.shot(f"partition-{day}-materialized", scroll_to=row)


def _checks(ui: Browser) -> None:
    """Checks tab: the validator blocks and failed on the bad day only; drift is non-blocking and warned."""
    ui.open(f"/assets/{FEATURE}?view=checks&checkDetail={CHECK}")
    ui.exact("This is a blocking asset check.")
    ui.exact("amount is >= 0")  # the validator's description
    ui.shot("check-overview")

    ui.click("Execution history", tag="button")
    ui.text(f"rows of {BAD_DAY} break 'amount is >= 0'")
    rows = {}
    for day in [BAD_DAY, *GOOD_DAYS]:
        cell = ui.exact(day, within="//table")
        rows[day] = cell.find_element(ui._by.XPATH, "./ancestor::tr[1]").text
    assert "Failed" in rows[BAD_DAY] and "Passed" not in rows[BAD_DAY], rows[BAD_DAY]
    assert all("Passed" in text and "Failed" not in text for day, text in rows.items() if day != BAD_DAY), rows
    ui.shot("check-execution-history")

    # The per-partition view: one status per partition, as the partition bar and list show them.
    ui.click("Partitions", tag="button")
    ui.text("Select a partition to view details")
    ui.shot("check-partitions")
    ui.text("Failed (1)")
    passed = f"Passed ({len(GOOD_DAYS)})"
    try:
        ui.text(passed, timeout=30)
    except AssertionError:
        counts = " ".join(line for line in ui.body().splitlines() if line.endswith(")"))
        raise AssertionError(
            f"the check's Partitions view does not show {passed}: {counts}. Dagster shows a partition's check result only "
            "while it targets the partition's newest materialization: an evaluation logged before the materialization "
            "(target_materialization_data=None) counts as missing once the materialization lands.") from None
    for day, result, says in ((BAD_DAY, "Failed", f"rows of {BAD_DAY} break"), (GOOD_DAYS[0], "Passed", f"rows of {GOOD_DAYS[0]} pass")):
        ui.click_item(day)
        description = ui.text(says)
        panel = description.find_element(ui._by.XPATH, "./ancestor::*[.//*[normalize-space(text())='Latest execution']][1]")
        assert panel.text.splitlines()[:2] == [day, result], panel.text  # the partition's heading and its result badge
        ui.shot(f"check-partition-{day}", scroll_to=description)

    ui.open(f"/assets/{FEATURE}?view=checks&checkDetail=drift")
    ui.exact("This is a non-blocking asset check.")
    latest = ui.text("Latest execution").find_element(ui._by.XPATH, "./ancestor::*[.//*[contains(text(), 'Evaluation result')]][1]")
    assert DRIFT_DAY in latest.text and "drift" in latest.text, latest.text
    # WARN severity: the result carries the yellow warning icon (its accessible name), not the red error one.
    result = latest.find_element(ui._by.XPATH, ".//*[normalize-space(text())='Evaluation result']/following-sibling::*[1]")
    icons = [i.get_attribute("aria-label") for i in result.find_elements(ui._by.XPATH, ".//*[@role='img']")]
    assert any("warning" in (i or "") for i in icons), icons
    ui.shot("drift-check")


def _lineage(ui: Browser) -> None:
    """The source asset is upstream: linked on the asset page and drawn before the feature in the lineage graph."""
    ui.open(f"/assets/{FEATURE}")
    link = ui.element(f"//a[contains(@href, '/assets/sources/{SOURCE}')]", "a link to the source asset")
    heading = link.find_element(ui._by.XPATH, "./preceding::*[normalize-space(text())][1]")
    assert heading.text.strip() == "Upstream assets", heading.text
    ui.shot("asset-overview-upstream", scroll_to=link)

    ui.open(f"/assets/{FEATURE}?view=lineage")
    ui.click("Upstream", tag="button")
    source = ui.exact(SOURCE, within="//*[name()='foreignObject']")
    feature = ui.exact(FEATURE, within="//*[name()='foreignObject']")
    assert source.location["x"] < feature.location["x"], (source.location, feature.location)  # the graph runs left to right
    assert ui.exact("sources").is_displayed()  # the source's group
    ui.shot("lineage-upstream")
