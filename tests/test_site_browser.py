"""The built website, opened in headless Chromium as a reader would.

Every page of ``_build/html`` is served from localhost and loaded at laptop width (1280 × 800, light
mode); chapter and front-matter pages (and one exercise/solution pair) also at phone width
(390 × 844, dark mode). The checks: no console errors, no failed requests, nothing fetched from
another host, every plotly figure the notebook produced is drawn with data, every slider/menu
changes what is drawn, math is typeset, no horizontal scrolling on a phone, and each page adds under 400 KB gzipped
to what every page shares (the theme, plotly.js, MathJax, the search index).

Fit, at both widths, on the pages checked on the phone (``_fit_checked``): every display equation
fits its column (at 390 px one that scrolls inside its own box is accepted; at 1280 px it must
fit), every figure control (slider, menu header, and a dropdown's buttons while it is open) lies
inside its figure and the viewport and clear of the figure title, and at 1280 px no line of a code
cell or of its printed output is wider than its box (at 390 px code boxes scroll sideways, which
is fine on a phone: they are counted in the report, not failed).

Screenshots go to ``test-artifacts/screenshots/`` (full page at laptop width, the first screen on
the phone); a summary, with every fit finding (page, width, what, the TeX or the line), to
``test-artifacts/browser-report.txt``.

Chromium comes from Debian's ``chromium`` package (``apt-get install chromium``), driven by the
``playwright`` Python package with ``executable_path`` — no browser is ever downloaded. Without it,
these tests skip locally with that hint, and fail on CI.
"""
from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import re
import shutil
import socketserver
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts"
SHOTS = ARTIFACTS / "screenshots"
# bytes a page adds to what every page shares (the theme's scripts, styles and fonts, plotly.js,
# MathJax and the search index: ~870 KB gzipped, fetched once and then cached)
PAGE_LIMIT_GZIP = 400_000
SHARED = ("_static/", "searchindex.js")
CHROMIUM = os.environ.get("BOOK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser_or_skip():
    problem = None
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        problem = "the playwright package is missing (pip install -r requirements.txt)"
    if problem is None and not Path(CHROMIUM).exists():
        problem = "Chromium is not installed: apt-get install chromium (Debian) — never `playwright install`"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run on CI: {problem}")
        pytest.skip(f"browser tests skipped: {problem}")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a browser closing a connection early is not a test failure


def _pages(html: Path) -> list[str]:
    return sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                  if not p.relative_to(html).as_posix().startswith(("_static/", "_sources/")))


def _expected_figures(html: Path, page: str) -> int:
    """Figures the page should have: one per plotly figure in its HTML source, or, when the executed
    notebook is at hand with its outputs, one per figure the kernel produced (whichever is more)."""
    in_source = (html / page).read_text(encoding="utf-8").count("Plotly.newPlot(")
    executed = html.parent / "jupyter_execute" / page.replace(".html", ".ipynb")
    produced = 0
    if executed.exists():
        for cell in nbformat.read(executed, as_version=4).cells:
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "application/vnd.plotly.v1+json" in data or "Plotly.newPlot" in data.get("text/html", ""):
                    produced += 1
    return max(in_source, produced)


JS_FIGURES = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  traces: (gd._fullData || []).length,
  drawn: gd.querySelectorAll('.heatmaplayer image, .barlayer .point path, .scatterlayer .trace path.js-line, .scatterlayer .point').length,
  sliders: ((gd._fullLayout || {}).sliders || []).length,
  menus: ((gd._fullLayout || {}).updatemenus || []).length,
  width: gd.getBoundingClientRect().width,
  column: (gd.closest('.bd-article') || document.body).getBoundingClientRect().width,
}))"""

JS_SNAPSHOT = """(i) => { const gd = document.querySelectorAll('.js-plotly-plot')[i];
  const plot = gd.querySelector('.cartesianlayer'); const title = gd.querySelector('.gtitle');
  return (plot ? plot.innerHTML : '') + '|' + (title ? title.textContent : ''); }"""

JS_RAW_MATH = r"""() => { const bad = [];
  const walker = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) { const n = walker.currentNode;
    if (n.parentElement.closest('pre, code, script, style, .highlight, textarea')) continue;
    if (/\$\$|\\\[|\\\(|\\begin\{/.test(n.textContent)) bad.push(n.textContent.trim().slice(0, 60)); }
  return {raw: bad, math: document.querySelectorAll('.math').length,
          typeset: document.querySelectorAll('.math mjx-container, mjx-container.MathJax').length}; }"""


# ----------------------------------------------------------------------------- fit (both widths)
# Display equations: the typeset equation (mjx-math) against the visible width of its container.
# "scrolls" when the container (or its div.math) scrolls sideways, else it is cut off / spills out.
JS_EQUATIONS = r"""() => { const root = document.querySelector('main') || document.body;
  const tex = new Map();
  try { for (const item of MathJax.startup.document.getMathItemsWithin(root))
          if (item.typesetRoot) tex.set(item.typesetRoot, item.math); } catch (e) {}
  const out = [];
  for (const eq of root.querySelectorAll('mjx-container[display="true"]')) {
    const math = eq.querySelector('mjx-math'); if (!math) continue;
    const box = eq.getBoundingClientRect(), m = math.getBoundingClientRect();
    const left = Math.max(box.left + eq.clientLeft, 0);
    const right = Math.min(box.left + eq.clientLeft + eq.clientWidth, document.documentElement.clientWidth);
    const over = Math.max(0, m.right - right) + Math.max(0, left - m.left);
    if (over <= 1) continue;
    const scrolls = [eq, eq.parentElement].some(e => e && /auto|scroll/.test(getComputedStyle(e).overflowX));
    const label = (tex.get(eq) || eq.getAttribute('aria-label') || eq.textContent || '').trim();
    out.push({width: Math.round(m.width), visible: Math.round(right - left), scrolls,
              tex: label.replace(/\s+/g, ' ').slice(0, 160)}); }
  return out; }"""

# Figure controls: slider pieces, menu headers and (while open) dropdown buttons, each against the
# figure's box, the viewport's width and the figure title; and the title itself against the figure.
JS_CONTROLS = r"""() => { const out = []; const vw = document.documentElement.clientWidth;
  const rect = e => { const r = e.getBoundingClientRect(); return {l: r.left, r: r.right, t: r.top, b: r.bottom}; };
  const union = els => els.map(rect).filter(r => r.r > r.l && r.b > r.t).reduce((u, r) => u ?
      {l: Math.min(u.l, r.l), r: Math.max(u.r, r.r), t: Math.min(u.t, r.t), b: Math.max(u.b, r.b)} : r, null);
  const hit = (a, b) => a.l < b.r - 1 && b.l < a.r - 1 && a.t < b.b - 1 && b.t < a.b - 1;
  document.querySelectorAll('.js-plotly-plot').forEach((gd, i) => {
    const fig = rect(gd.querySelector('.main-svg') || gd);
    const titleEl = gd.querySelector('.gtitle'); const title = titleEl ? rect(titleEl) : null;
    const parts = [];
    gd.querySelectorAll('.slider-group').forEach((g, k) => parts.push([`slider ${k}`,
        union(Array.from(g.querySelectorAll('.slider-rail-rect, .slider-grip-rect, .slider-label, .slider-current-value')))]));
    gd.querySelectorAll('.updatemenu-header-group').forEach((g, k) => parts.push([`menu ${k}`, union([g])]));
    gd.querySelectorAll('.updatemenu-dropdown-button').forEach((g, k) =>
        parts.push([`menu button ${k} "${g.textContent.trim().slice(0, 40)}"`, union([g])]));
    if (title && (title.l < fig.l - 1 || title.r > fig.r + 1)) out.push({figure: i, control: 'title',
        why: 'runs outside the figure', box: [title.l, title.t, title.r, title.b].map(Math.round),
        fig: [fig.l, fig.t, fig.r, fig.b].map(Math.round), title: titleEl.textContent.slice(0, 60)});
    for (const [what, r] of parts) { if (!r) continue; const why = [];
      if (r.l < fig.l - 1 || r.r > fig.r + 1 || r.t < fig.t - 1 || r.b > fig.b + 1) why.push('outside the figure');
      if (r.l < -1 || r.r > vw + 1) why.push('outside the viewport');
      if (title && hit(r, title)) why.push('over the title');
      if (why.length) out.push({figure: i, control: what, why: why.join(', '),
          box: [r.l, r.t, r.r, r.b].map(Math.round), fig: [fig.l, fig.t, fig.r, fig.b].map(Math.round),
          title: titleEl ? titleEl.textContent.slice(0, 60) : ''}); }
  });
  return out; }"""

# Code cells and their printed output: lines wider than the box (measured in the box's own font).
JS_CODE = r"""() => { const root = document.querySelector('main') || document.body;
  const ctx = document.createElement('canvas').getContext('2d'); const out = [];
  const cells = Array.from(root.querySelectorAll('div.cell'));
  for (const pre of root.querySelectorAll('div.cell_input pre, div.cell_output pre')) {
    if (pre.scrollWidth <= pre.clientWidth + 1) continue;
    const cs = getComputedStyle(pre); ctx.font = cs.font;
    const room = pre.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    const tab = ' '.repeat(parseInt(cs.tabSize) || 8);
    const lines = pre.textContent.replace(/\n$/, '').split('\n').map(l => l.replace(/\t/g, tab))
        .filter(l => ctx.measureText(l).width > room + 0.5);
    const per = ctx.measureText('0'.repeat(10)).width / 10;
    out.push({kind: pre.closest('div.cell_output') ? 'output' : 'code', room: Math.floor(room / per),
              lines: lines.map(l => l.replace(/\s+$/, '')),
              cell: cells.indexOf(pre.closest('div.cell')) + 1}); }  // the page's n-th code cell
  return out; }"""


# the sidebar links to solution notebooks a reader can see without unfolding anything
JS_VISIBLE_SOLUTION_LINKS = """() => [...document.querySelectorAll('.bd-sidebar-primary a[href]')]
  .filter(a => /solutions\\/\\d\\d_/.test(a.getAttribute('href')) && a.checkVisibility())
  .map(a => a.getAttribute('href'))"""


def _open_menus(page, measure):
    """Open each figure's dropdown, run ``measure`` while its buttons are drawn, close it again."""
    found = []
    headers = page.locator(".js-plotly-plot .updatemenu-header-group")
    for k in range(headers.count()):
        try:
            headers.nth(k).scroll_into_view_if_needed()
            headers.nth(k).click()
            page.wait_for_timeout(50)
            found += [c for c in measure() if c["control"].startswith("menu button")]
            headers.nth(k).click()
        except Exception as e:  # reported by the control test when it cannot be driven at all
            found.append({"figure": -1, "control": f"menu {k}", "why": f"could not open it: {type(e).__name__}"})
    return found


def _fit(page) -> dict:
    """What does not fit at this width: equations, figure controls, code lines."""
    controls = page.evaluate(JS_CONTROLS)
    controls += _open_menus(page, lambda: page.evaluate(JS_CONTROLS))
    return {"equations": page.evaluate(JS_EQUATIONS), "controls": controls, "code": page.evaluate(JS_CODE)}


def _wait_for_math(page):
    page.evaluate("() => (window.MathJax && MathJax.startup && MathJax.startup.promise) ? MathJax.startup.promise.then(() => true) : true")


def _drive_control(page, index: int, kind: str) -> None:
    gd = page.locator(".js-plotly-plot").nth(index)
    gd.scroll_into_view_if_needed()
    if kind == "slider":
        rail = gd.locator(".slider-rail-rect").first
        box = rail.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.9, box["y"] + box["height"] / 2)
    else:
        gd.locator(".updatemenu-header-group").first.click()
        gd.locator(".updatemenu-dropdown-button").last.click()


def _gzip_size(html: Path, url_path: str) -> int:
    path = html / unquote(url_path).lstrip("/")
    if path.is_dir():
        path = path / "index.html"
    return len(gzip.compress(path.read_bytes(), compresslevel=6)) if path.is_file() else 0


@pytest.fixture(scope="module")
def browser_report(site):
    assert site["returncode"] == 0, "the site build failed; see test_site_build"
    _browser_or_skip()
    from playwright.sync_api import sync_playwright

    html = site["html"]
    shutil.rmtree(SHOTS, ignore_errors=True)  # only this run's screenshots
    SHOTS.mkdir(parents=True, exist_ok=True)
    server = _Server(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    report = {"pages": {}, "base": base}
    t0 = time.perf_counter()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            laptop = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
            phone = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark",
                                        is_mobile=True, has_touch=True)
            for name in _pages(html):
                report["pages"][name] = _visit(laptop, phone, base, html, name)
            browser.close()
    finally:
        server.shutdown()
    report["seconds"] = time.perf_counter() - t0
    _write_summary(report)
    return report


def _visit(laptop, phone, base, html, name):
    facts = {"errors": [], "failed": [], "external": [], "requests": [], "controls": []}
    stem = name.replace("/", "__").replace(".html", "")
    page = laptop.new_page()
    page.on("console", lambda m: m.type == "error" and facts["errors"].append(m.text))
    page.on("pageerror", lambda e: facts["errors"].append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: "ERR_ABORTED" not in str(r.failure)  # cancelled by a redirect, not broken
            and facts["failed"].append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and facts["failed"].append(f"{r.url} (HTTP {r.status})"))

    def on_request(r):
        if r.url.startswith(base):
            facts["requests"].append(urlparse(r.url).path)
        elif not r.url.startswith(("data:", "blob:", "about:")):
            facts["external"].append(r.url)

    page.on("request", on_request)
    redirect = re.search(r'http-equiv="Refresh" content="0; url=([^"]+)"', (html / name).read_text(encoding="utf-8"))
    page.goto(f"{base}/{name}", wait_until="load")
    if redirect:  # index.html forwards the reader to the first chapter: check it lands there
        target = (Path(name).parent / redirect.group(1)).as_posix()
        page.wait_for_url(f"{base}/{target}")
        page.wait_for_load_state("load")
        name = target
    _wait_for_math(page)
    facts["expected_figures"] = _expected_figures(html, name)
    facts["figures"] = page.evaluate(JS_FIGURES)
    facts["math"] = page.evaluate(JS_RAW_MATH)
    facts["fit"] = {"laptop": _fit(page)} if _phone_checked(name) else {}  # before any control moves
    facts["visible_solutions"] = page.evaluate(JS_VISIBLE_SOLUTION_LINKS)
    for i, fig in enumerate(facts["figures"]):
        for kind, n in (("slider", fig["sliders"]), ("menu", fig["menus"])):
            if n:
                before = page.evaluate(JS_SNAPSHOT, i)
                try:
                    _drive_control(page, i, kind)
                    changed = False
                    for _ in range(20):  # up to 2 s for plotly to redraw on a busy machine
                        page.wait_for_timeout(100)
                        if page.evaluate(JS_SNAPSHOT, i) != before:
                            changed = True
                            break
                except Exception as e:  # the control could not be found or clicked
                    changed = f"could not drive it: {type(e).__name__}: {str(e).splitlines()[0]}"
                facts["controls"].append({"figure": i, "kind": kind, "changed": changed})
    page.screenshot(path=str(SHOTS / f"{stem}__laptop-light.png"), full_page=True)
    page.close()

    facts["phone_overflow"], facts["phone_theme"] = 0, "dark"
    if not _phone_checked(name):
        return _finish(facts, html)
    mobile = phone.new_page()
    mobile.on("console", lambda m: m.type == "error" and facts["errors"].append(f"(phone) {m.text}"))
    mobile.goto(f"{base}/{name}", wait_until="load")
    _wait_for_math(mobile)
    facts["landed_on"] = name
    facts["phone_overflow"] = mobile.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    facts["phone_theme"] = mobile.evaluate("() => document.documentElement.dataset.theme")
    facts["fit"]["phone"] = _fit(mobile)
    mobile.evaluate("() => window.scrollTo(0, 0)")  # _fit may have scrolled to a menu
    mobile.screenshot(path=str(SHOTS / f"{stem}__phone-dark.png"))  # the first screen: cheap, and what a reader sees first
    mobile.close()

    return _finish(facts, html)


def _phone_checked(name: str) -> bool:
    """Phone/dark pass and the fit checks (at both widths): every chapter and front-matter page, and
    one exercise/solution pair (their layout is the same for every chapter) — keeps the whole
    browser pass around two minutes."""
    return not name.startswith(("exercises/", "solutions/")) or "04_self_attention" in name


def _finish(facts, html):
    own = [r for r in set(facts["requests"]) if not any(s in r for s in SHARED)]
    facts["gzip_bytes"] = sum(_gzip_size(html, r) for r in own)
    return facts


def _write_summary(report):
    pages = report["pages"]
    figures = sum(len(f["figures"]) for f in pages.values())
    controls = sum(len(f["controls"]) for f in pages.values())
    heaviest = max(pages, key=lambda n: pages[n]["gzip_bytes"])
    lines = [f"{'page':<45} {'figures':>7} {'controls':>8} {'gzip KB':>8}"]
    for name, f in pages.items():
        lines.append(f"{name:<45} {len(f['figures']):>7} {len(f['controls']):>8} {f['gzip_bytes'] / 1024:>8.1f}")
    lines.append(f"{len(pages)} pages, {figures} figures, {controls} controls driven, "
                 f"{report['seconds']:.1f} s; heaviest page: {heaviest} "
                 f"({pages[heaviest]['gzip_bytes'] / 1024:.0f} KB gzipped without the shared assets)")
    lines += ["", "Fit (display equations, figure controls, code lines) at 1280 px (laptop) and 390 px (phone);",
              "at 390 px an equation that scrolls in its own box and code boxes that scroll are accepted."]
    lines += _fit_findings(report) or ["everything fits"]
    text = "\n".join(lines)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-report.txt").write_text(text + "\n")
    (ARTIFACTS / "browser-report.json").write_text(json.dumps(report, indent=1, default=str))
    print("\n" + text)


WIDTHS = {"laptop": 1280, "phone": 390}


def _fit_problems(report, what: str) -> list[str]:
    """The fit findings of one kind that fail the tests: 'equations', 'controls' or 'code'."""
    out = []
    for name, f in report["pages"].items():
        for width, fit in f.get("fit", {}).items():
            px = WIDTHS[width]
            if what == "equations":
                out += [f"{name} @{px}px: equation {e['width']} px wide in {e['visible']} px "
                        f"({'scrolls' if e['scrolls'] else 'cut off'}): {e['tex']}"
                        for e in fit["equations"] if width == "laptop" or not e["scrolls"]]
            elif what == "controls":
                out += [f"{name} @{px}px: figure {c['figure']} {c['control']} {c['why']} "
                        f"(box {c.get('box')}, figure {c.get('fig')}, title {c.get('title', '')!r})"
                        for c in fit["controls"]]
            elif width == "laptop":  # code: at 390 px a code box may scroll sideways (a phone is narrow)
                out += [f"{name} @{px}px: code cell {c['cell']}: {c['kind']} line longer than its box "
                        f"({len(line)} chars, room for {c['room']}): {line[:160]}"
                        for c in fit["code"] for line in (c["lines"] or ["(a line)"])]
    return out


def _fit_findings(report) -> list[str]:
    """Every fit finding, failing or not, for the report: what an author needs to fix it."""
    out = _fit_problems(report, "equations") + _fit_problems(report, "controls") + _fit_problems(report, "code")
    for name, f in report["pages"].items():
        for width, fit in f.get("fit", {}).items():
            if width == "phone":
                scrolls = [e for e in fit["equations"] if e["scrolls"]]
                out += [f"{name} @390px: (accepted) equation scrolls in its box, {e['width']} px in "
                        f"{e['visible']} px: {e['tex']}" for e in scrolls]
            boxes = len(fit["code"])
            if boxes:
                out.append(f"{name} @{WIDTHS[width]}px: {boxes} code/output boxes scroll sideways "
                           f"({sum(len(c['lines']) for c in fit['code'])} lines)"
                           + (" (accepted on a phone)" if width == "phone" else ""))
    return out


# ----------------------------------------------------------------------------- the checks
def test_every_page_was_visited(browser_report):
    pages = browser_report["pages"]
    assert "chapters/04_self_attention.html" in pages and "index.html" in pages
    print(f"{len(pages)} pages in {browser_report['seconds']:.1f} s")


def test_no_console_errors_and_no_failed_requests(browser_report):
    bad = {n: f["errors"] + f["failed"] for n, f in browser_report["pages"].items() if f["errors"] or f["failed"]}
    assert not bad, json.dumps(bad, indent=1)


def test_nothing_is_fetched_from_another_host(browser_report):
    bad = {n: f["external"] for n, f in browser_report["pages"].items() if f["external"]}
    assert not bad, json.dumps(bad, indent=1)


def test_every_figure_is_drawn_with_data(browser_report):
    problems = []
    for name, f in browser_report["pages"].items():
        if len(f["figures"]) != f["expected_figures"]:
            problems.append(f"{name}: {f['expected_figures']} figures produced, {len(f['figures'])} on the page")
        for i, fig in enumerate(f["figures"]):
            if not fig["traces"] or not fig["drawn"]:
                problems.append(f"{name}: figure {i} is blank ({fig})")
            if fig["width"] > fig["column"] + 1:
                problems.append(f"{name}: figure {i} is wider than the column ({fig['width']} > {fig['column']})")
    assert not problems, "\n".join(problems)
    assert browser_report["pages"]["chapters/04_self_attention.html"]["expected_figures"] >= 5


def test_sliders_and_menus_change_the_drawing(browser_report):
    bad = [f"{n}: figure {c['figure']} {c['kind']}: {c['changed']}"
           for n, f in browser_report["pages"].items() for c in f["controls"] if c["changed"] is not True]
    assert not bad, "\n".join(bad)
    kinds = {c["kind"] for f in browser_report["pages"].values() for c in f["controls"]}
    assert kinds == {"slider", "menu"}


def test_solutions_are_folded_away_in_the_sidebar(browser_report):
    """A reader of a chapter or an exercise sees one 'Worked solutions' entry, not the answers."""
    shown = {name: f["visible_solutions"] for name, f in browser_report["pages"].items()
             if not name.startswith("solutions/") and f["visible_solutions"]}
    assert not shown, f"solution pages listed, unfolded, in the sidebar: {shown}"


def test_math_is_typeset(browser_report):
    bad = {}
    for name, f in browser_report["pages"].items():
        m = f["math"]
        if m["raw"] or m["typeset"] < m["math"]:
            bad[name] = m
    assert not bad, json.dumps(bad, indent=1)
    assert browser_report["pages"]["chapters/04_self_attention.html"]["math"]["typeset"] > 10


def test_no_horizontal_scrolling_on_a_phone(browser_report):
    bad = {n: f["phone_overflow"] for n, f in browser_report["pages"].items() if f["phone_overflow"] > 1}
    assert not bad, f"pages wider than a 390 px phone (extra px): {bad}"
    assert {f["phone_theme"] for f in browser_report["pages"].values()} == {"dark"}


def test_page_weight(browser_report):
    heavy = {n: f["gzip_bytes"] for n, f in browser_report["pages"].items() if f["gzip_bytes"] > PAGE_LIMIT_GZIP}
    assert not heavy, (f"pages adding over {PAGE_LIMIT_GZIP // 1000} KB gzipped to the shared theme, "
                       f"plotly.js, MathJax and search index: {heavy}")


def test_screenshots_saved(browser_report):
    for name in browser_report["pages"]:
        stem = name.replace("/", "__").replace(".html", "")
        variants = ("laptop-light", "phone-dark") if _phone_checked(name) else ("laptop-light",)
        for variant in variants:
            assert (SHOTS / f"{stem}__{variant}.png").stat().st_size > 1000


def test_fit_was_measured(browser_report):
    fit = browser_report["pages"]["chapters/04_self_attention.html"]["fit"]
    assert set(fit) == {"laptop", "phone"}


def test_display_equations_fit(browser_report):
    """No display equation is cut off or needs a scroll bar at 1280 px; at 390 px it may scroll."""
    bad = _fit_problems(browser_report, "equations")
    assert not bad, "\n".join(bad)


def test_figure_controls_stay_inside_the_figure(browser_report):
    """Sliders, menus and open dropdowns: inside the figure and the viewport, clear of the title."""
    bad = _fit_problems(browser_report, "controls")
    assert not bad, "\n".join(bad)


def test_code_lines_fit_at_laptop_width(browser_report):
    """No code or output line scrolls sideways at 1280 px (on a 390 px phone that is accepted)."""
    bad = _fit_problems(browser_report, "code")
    assert not bad, "\n".join(bad)
