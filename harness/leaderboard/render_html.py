"""The self-contained HTML report: inline CSS and JS, figures as base64 PNG, no network needed."""

from __future__ import annotations

import base64
import html
import json
import math
from string import Template
from typing import Any, Sequence

from harness.leaderboard.sections import Table

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1250px;color:#222;padding:0 1em}
.table-wrap{overflow-x:auto;max-width:100%;margin:.5em 0 1.2em}
table{border-collapse:separate;border-spacing:0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top;max-width:420px;overflow-wrap:anywhere}
th{background:#f0f0f0} td.best{font-weight:bold;background:#e3f4e3}
th:first-child,td:first-child{position:sticky;left:0;background:#fafafa;z-index:1;min-width:15em;overflow-wrap:normal}
th:first-child{background:#e8e8e8} td.best:first-child{background:#e3f4e3}
table.sortable thead th{cursor:pointer;user-select:none} table.sortable thead th::after{content:" ⇅";color:#999}
table.sortable thead th.asc::after{content:" ▲";color:#333} table.sortable thead th.desc::after{content:" ▼";color:#333}
tfoot td{background:#f7f7f7;font-size:12px}
.note{font-size:12px;color:#555;max-width:1100px} .published{border:2px dashed #b07000;padding:.3em .8em;margin:1em 0;background:#fffaf0}
.published h4{color:#8a5a00} table.published{border:0;padding:0;margin:0;background:none} img.plot{max-width:100%;border:1px solid #ddd;margin:.3em 0}
nav a{margin-right:1em} #explorer{display:flex;gap:1em;align-items:flex-start}
#sample-list{list-style:none;padding:0;margin:0;max-height:520px;overflow:auto;min-width:230px;border:1px solid #ccc}
#sample-list li{padding:3px 6px;cursor:pointer;border-bottom:1px solid #eee;font-size:12px}
#sample-list li.active{background:#dde8ff} #sample-list li.dis::after{content:" ≠";color:#b00}
#sample-detail{flex:1;min-width:0} .cards{display:flex;flex-wrap:wrap;gap:.6em}
.answer-card{border:1px solid #ccc;border-radius:4px;padding:.4em .6em;min-width:240px;max-width:460px;font-size:13px}
.answer-card.right{border-color:#2a8a2a;background:#effaef} .answer-card.wrong{border-color:#b33;background:#fdf0f0}
.answer-card.partial{border-color:#b08000;background:#fff8e0} .answer-card.oracle{border-style:dashed}
.demos{display:flex;flex-wrap:wrap;gap:.4em;margin:.3em 0} .demo{font-size:11px;max-width:90px;text-align:center}
.demo img{display:block;max-width:72px;max-height:72px;margin:auto}
.thumb-missing{width:160px;padding:1em;border:1px dashed #b33;color:#b33;font-size:12px}
pre{white-space:pre-wrap;font-size:11px;max-height:260px;overflow:auto;background:#f7f7f7;overflow-wrap:anywhere}
"""

_JS = r"""
(function(){
function el(tag, attrs, text){const e=document.createElement(tag); for(const k in (attrs||{})) e.setAttribute(k, attrs[k]); if(text!==undefined) e.textContent=text; return e;}
// ---- sortable tables: click a header; numbers sort by data-sort, the rest by text; tfoot stays put
document.querySelectorAll('table.sortable').forEach(t => {
  const heads = t.querySelectorAll('thead th');
  heads.forEach((th, col) => th.addEventListener('click', () => {
    const asc = !th.classList.contains('asc');
    heads.forEach(h => h.classList.remove('asc', 'desc')); th.classList.add(asc ? 'asc' : 'desc');
    const body = t.tBodies[0]; const rows = Array.from(body.rows);
    const key = r => {const c = r.cells[col]; if (!c) return [1, ''];
      const v = c.getAttribute('data-sort'); return v === null || v === '' ? [1, c.textContent] : [0, parseFloat(v)];};
    rows.sort((a, b) => {const x = key(a), y = key(b);
      if (x[0] !== y[0]) return x[0] - y[0];
      const c = typeof x[1] === 'number' ? x[1] - y[1] : String(x[1]).localeCompare(String(y[1]));
      return asc ? c : -c;});
    rows.forEach(r => body.appendChild(r));
  }));
});
// ---- explorer
const D = JSON.parse(document.getElementById('explorer-data').textContent);
const tSel = document.getElementById('task-select'), sSel = document.getElementById('setting-select');
const dis = document.getElementById('disagree-only'), list = document.getElementById('sample-list');
const detail = document.getElementById('sample-detail'), info = document.getElementById('explorer-info');
const gapsEl = document.getElementById('oracle-gaps');
Object.keys(D.tasks).forEach(t => tSel.appendChild(el('option', {value:t}, t)));
function task(){return D.tasks[tSel.value];}
function fillSettings(){sSel.textContent=''; (task()?task().settings:[]).forEach(s => sSel.appendChild(el('option', {value:s}, s)));}
function image(src, attrs, missingClass){
  if (src && src.startsWith('data:image/')) {const i = el('img', attrs); i.src = src; return i;}
  return el('div', {'class':missingClass}, 'Image not shown: ' + (src || 'unavailable').replace(/^error: /,''));
}
function details(label, text, open){const d=el('details'); if(open) d.open=true; d.appendChild(el('summary', {}, label)); d.appendChild(el('pre', {}, text)); return d;}
function verdictText(a){return {right:'✔ right', wrong:'✘ wrong', partial:'◐ partial', unscored:'– unscored'}[a.verdict] || a.verdict;}
function show(s){
  detail.textContent=''; const T=task(), set=sSel.value;
  detail.appendChild(el('h4', {}, s.id));
  detail.appendChild(image(s.thumb, {id:'thumb', alt:'image of ' + s.id}, 'thumb-missing'));
  if (s.question) detail.appendChild(el('p', {'class':'question'}, 'Question: ' + s.question));
  if (s.choices && s.choices.length) detail.appendChild(el('p', {}, 'Choices: ' + s.choices.join(' | ')));
  if (s.answers && s.answers.length) detail.appendChild(el('p', {'class':'gold'}, T.answers_label + ': ' + s.answers.join(', ')));
  if (s.references && s.references.length) detail.appendChild(el('p', {'class':'gold'}, 'References: ' + s.references.join(' / ')));
  detail.appendChild(el('p', {'class':'note'}, 'Verdicts (' + T.metric + '): right = ' + T.right + '. Scores are on the scale of the tables.'));
  const cards = el('div', {'class':'cards'}); const by = (s.by[set] || {});
  T.paradigms.forEach(p => {
    const a = by[p]; if (!a) return;
    const c = el('div', {'class':'answer-card ' + a.verdict + (a.oracle ? ' oracle' : '')});
    c.appendChild(el('b', {'class':'setup'}, p)); if (a.oracle) c.appendChild(el('span', {'class':'note'}, ' (oracle: given human references)'));
    c.appendChild(el('div', {'class':'verdict'}, verdictText(a) + ' — ' + a.score_text));
    c.appendChild(el('div', {'class':'prediction'}, a.prediction || '(empty)'));
    if (a.error) c.appendChild(el('div', {'class':'note'}, 'error: ' + a.error));
    if (a.demos && a.demos.length){
      c.appendChild(el('div', {'class':'note'}, a.demos.length + ' demonstration(s):'));
      const ds = el('div', {'class':'demos'});
      a.demos.forEach(d => {const b = el('div', {'class':'demo'}); b.appendChild(image(d.thumb, {alt:'demonstration ' + d.id}, 'note'));
        b.appendChild(el('div', {'class':'demo-answer'}, d.answer)); b.appendChild(el('div', {'class':'note'}, d.id)); ds.appendChild(b);});
      c.appendChild(ds);
    }
    if (a.prompt) c.appendChild(details('task prompt', a.prompt, false));
    (a.sections || []).forEach(x => c.appendChild(details(x.label, x.text, false)));
    cards.appendChild(c);
  });
  detail.appendChild(cards);
}
function fillGaps(){
  gapsEl.textContent=''; const T=task(); if(!T) return; const set=sSel.value;
  (T.oracle_gaps || []).filter(g => g.setting === set).forEach(g => gapsEl.appendChild(el('li', {},
    'oracle ' + g.oracle + ' ' + g.oracle_mean.toFixed(1) + ' vs ' + g.real + ' ' + g.real_mean.toFixed(1) +
    ': gap ' + (g.gap >= 0 ? '+' : '') + g.gap.toFixed(1) + ' (' + T.metric + ', mean over the samples shown)')));
}
function fillList(){
  list.textContent=''; const T=task(); if(!T) return; const set=sSel.value; let n=0;
  T.samples.forEach(s => {
    if (!s.by[set]) return; const d = !!(s.disagree||{})[set];
    if (dis.checked && !d) return;
    const li = el('li', {'class':'sample' + (d ? ' dis' : '')}, s.id);
    li.onclick = () => {list.querySelectorAll('li').forEach(x=>x.classList.remove('active')); li.classList.add('active'); show(s);};
    list.appendChild(li); n++;
  });
  info.textContent = n + ' sample(s) shown' + (dis.checked ? ' (only where setups disagree: ' + D.disagree + ')' : '');
  detail.textContent=''; detail.appendChild(el('p', {'class':'note'}, n ? 'Click a sample.' : 'No sample matches.'));
  fillGaps();
}
tSel.onchange = () => {fillSettings(); fillList();}; sSel.onchange = fillList; dis.onchange = fillList;
fillSettings(); fillList();
})();
"""

_PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>$title</title><style>$css</style></head>
<body><h1>$title</h1><p class="note">$intro</p><nav>$nav</nav>
$body
<h2 id="explorer-section">Per-sample explorer</h2>
<p class="note">Pick a data set and setting, click a sample: its image, the demonstrations, and every setup's answer
with the prompt and what the paradigm did (converted text, tool observations, decoding candidates).</p>
<label>data <select id="task-select"></select></label>
<label>setting <select id="setting-select"></select></label>
<label><input type="checkbox" id="disagree-only"> only samples where setups disagree</label>
<p id="explorer-info" class="note"></p>
<ul id="oracle-gaps" class="note"></ul>
<div id="explorer"><ul id="sample-list"></ul><div id="sample-detail"></div></div>
<script type="application/json" id="explorer-data">$data</script>
<script>$js</script>
</body></html>
""")


def html_table(t: Table, published: bool = False) -> str:
    """A table with every store-derived string escaped; sortable by its header unless published."""
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.header)
    body = []
    for i, row in enumerate(t.rows):
        flags = t.best[i] if i < len(t.best) else [False] * len(row)
        keys = t.sort[i] if i < len(t.sort) else [None] * len(row)
        cells = []
        for j, c in enumerate(row):
            attrs = ' class="best"' if j < len(flags) and flags[j] else ""
            k = keys[j] if j < len(keys) else None
            if k is not None and math.isfinite(k):
                attrs += f' data-sort="{k!r}"'
            cells.append(f"<td{attrs}>{e(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    foot = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.footer)
    cls = "published" if published else "measured sortable"
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    tfoot = f"<tfoot>{foot}</tfoot>" if foot else ""
    inner = (f'<h4>{e(t.title)}</h4><div class="table-wrap"><table class="{cls}"><thead><tr>{head}</tr></thead>'
             f"<tbody>{''.join(body)}</tbody>{tfoot}</table></div>{note}")
    return f'<div class="published">{inner}</div>' if published else inner


def img_tag(png: bytes, alt: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def script_json(obj: Any) -> str:
    """JSON safe inside a ``<script>`` element: ``<``, ``>``, ``&`` (and U+2028/9) as ``\\uXXXX`` escapes,
    so no store string (a prediction ``<!--<script>`` or ``</script>``) can end or bend the element."""
    text = json.dumps(obj, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def render_html(title: str, intro: str, sections: Sequence[tuple[str, str, Sequence[Table], Sequence[tuple[bytes, str]]]],
                explorer: dict[str, Any]) -> str:
    """``sections``: (heading, tables, figures as (png, caption)); anchors are numbered here, never
    taken from store strings. Published tables are recognised by title."""
    nav, body = [], []
    for i, (_, heading, tables, figures) in enumerate(sections):
        anchor = f"sec-{i}"
        nav.append(f'<a href="#{anchor}">{html.escape(heading)}</a>')
        body.append(f'<h2 id="{anchor}">{html.escape(heading)}</h2>')
        body += [html_table(t, published=t.title.startswith("Published")) for t in tables]
        body += [img_tag(png, cap) for png, cap in figures]
    nav.append('<a href="#explorer-section">Per-sample explorer</a>')
    return _PAGE.substitute(title=html.escape(title), css=_CSS, intro=html.escape(intro), nav="".join(nav),
                            body="\n".join(body), data=script_json(explorer), js=_JS)
