"""The self-contained HTML report: inline CSS and JS, figures as base64 PNG, no network needed."""

from __future__ import annotations

import base64
import html
import json
from string import Template
from typing import Any, Sequence

from harness.leaderboard.sections import Table

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1250px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f0f0f0} td.best{font-weight:bold;background:#e3f4e3}
.note{font-size:12px;color:#555;max-width:1100px} .published{border:2px dashed #b07000;padding:.3em .8em;margin:1em 0;background:#fffaf0}
.published h4{color:#8a5a00} img.plot{max-width:100%;border:1px solid #ddd;margin:.3em 0}
nav a{margin-right:1em} #explorer{display:flex;gap:1em;align-items:flex-start}
#sample-list{list-style:none;padding:0;margin:0;max-height:520px;overflow:auto;min-width:230px;border:1px solid #ccc}
#sample-list li{padding:3px 6px;cursor:pointer;border-bottom:1px solid #eee;font-size:12px}
#sample-list li.active{background:#dde8ff} #sample-list li.dis::after{content:" ≠";color:#b00}
#sample-detail{flex:1} .cards{display:flex;flex-wrap:wrap;gap:.6em}
.answer-card{border:1px solid #ccc;border-radius:4px;padding:.4em .6em;min-width:220px;max-width:380px;font-size:13px}
.answer-card.right{border-color:#2a8a2a;background:#effaef} .answer-card.wrong{border-color:#b33;background:#fdf0f0}
.thumb-missing{width:160px;padding:1em;border:1px dashed #b33;color:#b33;font-size:12px}
pre{white-space:pre-wrap;font-size:11px;max-height:260px;overflow:auto;background:#f7f7f7}
"""

_JS = r"""
(function(){
const D = JSON.parse(document.getElementById('explorer-data').textContent);
const tSel = document.getElementById('task-select'), sSel = document.getElementById('setting-select');
const dis = document.getElementById('disagree-only'), list = document.getElementById('sample-list');
const detail = document.getElementById('sample-detail'), info = document.getElementById('explorer-info');
function el(tag, attrs, text){const e=document.createElement(tag); for(const k in (attrs||{})) e.setAttribute(k, attrs[k]); if(text!==undefined) e.textContent=text; return e;}
Object.keys(D.tasks).forEach(t => tSel.appendChild(el('option', {value:t}, t)));
function task(){return D.tasks[tSel.value];}
function fillSettings(){sSel.innerHTML=''; (task()?task().settings:[]).forEach(s => sSel.appendChild(el('option', {value:s}, s)));}
function show(s){
  detail.innerHTML=''; const T=task(), set=sSel.value;
  detail.appendChild(el('h4', {}, s.id));
  if (s.thumb && s.thumb.startsWith('data:')) detail.appendChild(el('img', {src:s.thumb, id:'thumb', alt:'image of '+s.id}));
  else detail.appendChild(el('div', {'class':'thumb-missing'}, 'Image not shown: ' + (s.thumb || 'unavailable').replace(/^error: /,'')));
  if (s.question) detail.appendChild(el('p', {}, 'Question: ' + s.question));
  if (s.choices && s.choices.length) detail.appendChild(el('p', {}, 'Choices: ' + s.choices.join(' | ')));
  if (s.answers && s.answers.length) detail.appendChild(el('p', {}, 'Human answers: ' + s.answers.join(', ')));
  if (s.references && s.references.length) detail.appendChild(el('p', {}, 'References: ' + s.references.join(' / ')));
  detail.appendChild(el('p', {'class':'note'}, '"Right" (' + T.metric + '): ' + T.right));
  const cards = el('div', {'class':'cards'}); const by = (s.by[set] || {});
  T.paradigms.forEach(p => {
    const a = by[p]; if (!a) return;
    const c = el('div', {'class':'answer-card ' + (a.right ? 'right' : 'wrong')});
    c.appendChild(el('b', {}, p)); c.appendChild(el('div', {}, (a.right ? '✔ right' : '✘ wrong') + ' — score ' + (a.score===null||a.score===undefined ? 'n/a' : Number(a.score).toFixed(3))));
    c.appendChild(el('div', {'class':'prediction'}, a.prediction || '(empty)'));
    if (a.error) c.appendChild(el('div', {'class':'note'}, 'error: ' + a.error));
    if (a.transcript){const d=el('details'); d.appendChild(el('summary', {}, 'agent transcript')); d.appendChild(el('pre', {}, a.transcript)); c.appendChild(d);}
    cards.appendChild(c);
  });
  detail.appendChild(cards);
}
function fillList(){
  list.innerHTML=''; const T=task(); if(!T) return; const set=sSel.value; let n=0;
  T.samples.forEach(s => {
    if (!s.by[set]) return; const d = !!(s.disagree||{})[set];
    if (dis.checked && !d) return;
    const li = el('li', {'class':'sample' + (d ? ' dis' : ''), 'data-id':s.id}, s.id);
    li.onclick = () => {list.querySelectorAll('li').forEach(x=>x.classList.remove('active')); li.classList.add('active'); show(s);};
    list.appendChild(li); n++;
  });
  info.textContent = n + ' sample(s) shown' + (dis.checked ? ' (only where paradigms disagree: ' + D.disagree + ')' : '');
  detail.innerHTML = n ? '<p class="note">Click a sample.</p>' : '<p class="note">No sample matches.</p>';
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
<p class="note">Pick a task and setting, click a sample: its image and every paradigm's answer, side by side.</p>
<label>task <select id="task-select"></select></label>
<label>setting <select id="setting-select"></select></label>
<label><input type="checkbox" id="disagree-only"> only samples where paradigms disagree</label>
<p id="explorer-info" class="note"></p>
<div id="explorer"><ul id="sample-list"></ul><div id="sample-detail"></div></div>
<script type="application/json" id="explorer-data">$data</script>
<script>$js</script>
</body></html>
""")


def html_table(t: Table, published: bool = False) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for i, row in enumerate(t.rows):
        flags = t.best[i] if i < len(t.best) else [False] * len(row)
        cells = (('<td class="best">' if f else "<td>") + html.escape(c) + "</td>" for c, f in zip(row, flags))
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = "published" if published else "measured"
    note = f'<p class="note">{html.escape(t.note)}</p>' if t.note else ""
    inner = f"<h4>{html.escape(t.title)}</h4><table class=\"{cls}\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"
    return f'<div class="published">{inner}</div>' if published else inner


def img_tag(png: bytes, alt: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def render_html(title: str, intro: str, sections: Sequence[tuple[str, str, Sequence[Table], Sequence[tuple[bytes, str]]]],
                explorer: dict[str, Any]) -> str:
    """``sections``: (anchor id, heading, tables, figures as (png, caption)); published tables by title."""
    nav, body = [], []
    for anchor, heading, tables, figures in sections:
        nav.append(f'<a href="#{anchor}">{html.escape(heading)}</a>')
        body.append(f'<h2 id="{anchor}">{html.escape(heading)}</h2>')
        body += [html_table(t, published=t.title.startswith("Published")) for t in tables]
        body += [img_tag(png, cap) for png, cap in figures]
    nav.append('<a href="#explorer-section">Per-sample explorer</a>')
    data = json.dumps(explorer, ensure_ascii=False).replace("</", "<\\/")
    return _PAGE.substitute(title=html.escape(title), css=_CSS, intro=html.escape(intro), nav="".join(nav),
                            body="\n".join(body), data=data, js=_JS)
