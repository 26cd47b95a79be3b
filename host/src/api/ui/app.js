// Braid's web UI: hash routes over the /v1 API. Blocks are folded nodes with counts by
// status, so a run with a 10,000-item map draws one node until it is opened, and then a
// page of items at a time. Running runs follow GET /v1/runs/{id}/events.
'use strict';

const main = document.getElementById('main');
const TOKEN_KEY = 'braid-token';
const CHILDREN_PAGE = 200;
let askingForToken = null;
// Stops the current page's live updates when another page is shown.
let leavePage = () => {};

// --- the API, with the token asked for once per browser session -------------------------

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: 'Bearer ' + token } : {};
}

function askForToken() {
  if (!askingForToken) {
    askingForToken = new Promise((resolve) => {
      const dialog = document.getElementById('token-dialog');
      const input = document.getElementById('token-input');
      document.getElementById('token-form').onsubmit = (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        input.value = '';
        dialog.close();
        askingForToken = null;
        resolve();
      };
      dialog.showModal();
    });
  }
  return askingForToken;
}

async function api(path, options = {}) {
  for (;;) {
    const response = await fetch('/v1' + path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      await askForToken();
      continue;
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error((body && body.error) || response.statusText);
    return body;
  }
}

// Calls `onEvent` for each event of the run's stream until it ends or `stop` is called.
function followEvents(runId, onEvent) {
  const controller = new AbortController();
  (async () => {
    const response = await fetch(`/v1/runs/${runId}/events`, { headers: authHeaders(), signal: controller.signal });
    if (!response.ok || !response.body) return;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('');
        if (data) onEvent(JSON.parse(data));
      }
    }
  })().catch(() => {});
  return () => controller.abort();
}

// --- small helpers ----------------------------------------------------------------------

function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

const badge = (status) => h('span', { class: `status ${status}`, 'data-status': status }, status);

function duration(started, finished) {
  if (!started) return '';
  const ms = (finished ? new Date(finished) : new Date()) - new Date(started);
  return ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function counts(byStatus) {
  const order = ['succeeded', 'failed', 'running', 'cancelled', 'pending', 'skipped'];
  return h('span', { class: 'counts' },
    order.filter((s) => byStatus[s]).map((s) => h('span', { class: `count ${s}` }, `${byStatus[s]} ${s}`)));
}

const json = (value) => h('pre', { class: 'json' }, JSON.stringify(value, null, 2));

// Replaces `element`'s children (arrays flattened, absent parts left out).
function fill(element, ...children) {
  element.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
}

function show(...children) {
  fill(main, ...children);
}

function failure(error) {
  show(h('p', { class: 'error' }, String(error.message || error)));
}

// --- pages ------------------------------------------------------------------------------

async function runsPage() {
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const workflow = h('input', { id: 'filter-workflow', placeholder: 'workflow', value: params.get('workflow') || '' });
  const status = h('select', { id: 'filter-status' },
    ['', 'pending', 'running', 'succeeded', 'failed', 'cancelled'].map((s) =>
      h('option', { value: s, selected: s === (params.get('status') || '') }, s || 'any status')));
  const apply = () => { location.hash = `#/runs?workflow=${encodeURIComponent(workflow.value)}&status=${status.value}`; };
  workflow.addEventListener('change', apply);
  status.addEventListener('change', apply);
  const body = h('tbody');
  show(h('h1', {}, 'Runs'), h('div', { class: 'filters' }, workflow, status),
    h('table', { id: 'runs' }, h('thead', {}, h('tr', {}, ['run', 'workflow', 'status', 'duration', 'created'].map((c) => h('th', {}, c)))), body));
  const refresh = async () => {
    const query = new URLSearchParams({ limit: '50' });
    if (params.get('workflow')) query.set('workflow', params.get('workflow'));
    if (params.get('status')) query.set('status', params.get('status'));
    const { runs } = await api(`/runs?${query}`);
    body.replaceChildren(...runs.map((run) => h('tr', { 'data-run': run.id },
      h('td', {}, h('a', { href: `#/runs/${run.id}` }, run.id)),
      h('td', {}, `${run.workflow_name}@${run.workflow_version}`),
      h('td', {}, badge(run.status)),
      h('td', {}, duration(run.started_at, run.finished_at)),
      h('td', {}, new Date(run.created_at).toLocaleString()))));
  };
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 1000);
  leavePage = () => clearInterval(timer);
}

// Finds a step of the definition by id (for its max_parallelism).
function findStep(steps, id) {
  for (const step of steps || []) {
    if (step.id === id) return step;
    const nested = [step.steps, step.step && [step.step], step.body, ...(step.branches || []).map((b) => b.steps || [b]),
      ...(step.cases || []).map((c) => c.steps), step.default].filter(Boolean);
    for (const inner of nested) {
      const found = findStep(inner, id);
      if (found) return found;
    }
  }
  return null;
}

async function runPage(runId) {
  const expanded = new Set();
  let definition = null;
  let definitionAsked = false;
  let run = null;
  const header = h('section', { id: 'run-header' });
  const tree = h('section', { id: 'tree' });
  show(header, tree);

  const row = (step, byBlock) => {
    const isBlock = step.step_type !== 'agent';
    const place = step.branch_name ? `[${step.branch_name}] ` : step.item_index !== null && step.item_index !== undefined ? `#${step.item_index} ` : '';
    const line = h('div', { class: `node ${isBlock ? 'block' : 'agent'}`, 'data-step': step.step_id, 'data-id': step.id },
      isBlock ? h('button', { class: 'fold', onclick: () => { expanded.has(step.id) ? expanded.delete(step.id) : expanded.add(step.id); render(); } }, expanded.has(step.id) ? '▾' : '▸') : h('span', { class: 'fold' }),
      h('span', { class: 'place' }, place),
      isBlock ? h('span', { class: 'name' }, `${step.step_id} (${step.step_type})`)
        : h('a', { class: 'name', href: `#/runs/${runId}/steps/${step.id}` }, step.step_id),
      step.attempt > 1 ? h('span', { class: 'muted' }, ` attempt ${step.attempt}`) : null,
      ' ', badge(step.status),
      isBlock && byBlock[step.id] ? counts(byBlock[step.id]) : null,
      h('span', { class: 'muted' }, ' ', duration(step.started_at, step.finished_at)),
      step.host_id ? h('span', { class: 'muted host' }, ` on ${step.host_id}`) : null,
      step.error && step.status !== 'succeeded' ? h('div', { class: 'error' }, step.error) : null);
    return line;
  };

  // A waterfall of `rows` against the run's time, with their peak concurrency.
  const waterfall = (rows, block) => {
    const start = new Date(run.started_at || run.created_at).getTime();
    const end = run.finished_at ? new Date(run.finished_at).getTime() : Date.now();
    const span = Math.max(end - start, 1);
    const events = [];
    for (const r of rows) if (r.started_at) { events.push([new Date(r.started_at).getTime(), 1]); events.push([r.finished_at ? new Date(r.finished_at).getTime() : end, -1]); }
    events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let live = 0, peak = 0;
    for (const [, d] of events) { live += d; peak = Math.max(peak, live); }
    const bound = block && definition ? (findStep(definition.steps, block.step_id) || {}).max_parallelism : null;
    return h('div', { class: 'waterfall' },
      h('div', { class: 'muted' }, `peak ${peak} running at once` + (bound ? ` (max_parallelism ${bound})` : '')),
      rows.filter((r) => r.started_at).map((r) => {
        const left = ((new Date(r.started_at).getTime() - start) / span) * 100;
        const width = Math.max((((r.finished_at ? new Date(r.finished_at).getTime() : end) - new Date(r.started_at).getTime()) / span) * 100, 0.2);
        return h('div', { class: 'lane' }, h('div', { class: `bar ${r.status}`, style: `left:${left}%;width:${width}%`, title: `${r.step_key || r.step_id} ${r.status}` }));
      }));
  };

  // `first`: the first page, when the caller fetched it already.
  const children = async (container, parent, byBlock, block, first) => {
    let after = null;
    const list = h('div', { class: 'children' });
    const rows = [];
    const more = h('button', { class: 'more' }, 'Load more');
    const load = async (prefetched) => {
      const query = new URLSearchParams({ parent, limit: String(CHILDREN_PAGE), data: 'false' });
      if (after) query.set('after', after);
      const page = prefetched || await api(`/runs/${runId}/steps?${query}`);
      rows.push(...page.steps);
      for (const step of page.steps) {
        list.append(row(step, byBlock));
        if (expanded.has(step.id)) await children(list, step.id, byBlock, step);
      }
      after = page.next;
      more.hidden = !after;
      wf.replaceWith(wf = waterfall(rows, block));
    };
    let wf = h('div');
    more.addEventListener('click', () => load().catch(failure));
    container.append(h('div', { class: 'nested' }, wf, list, more));
    await load(first);
  };

  let rendering = false;
  let again = false;
  const render = async () => {
    if (rendering) { again = true; return; }
    rendering = true;
    try {
      // One query of counts and the first page of the top level, side by side; the
      // definition (for each block's max_parallelism) once, without holding up the page.
      const [progress, top] = await Promise.all([
        api(`/runs/${runId}/blocks`),
        api(`/runs/${runId}/steps?parent=top&limit=${CHILDREN_PAGE}&data=false`),
      ]);
      run = progress.run;
      if (!definitionAsked) {
        definitionAsked = true;
        api(`/workflows/${encodeURIComponent(run.workflow_name)}/${encodeURIComponent(run.workflow_version)}`)
          .then((w) => { definition = w.definition; }, () => {});
      }
      const blocks = progress.blocks;
      const byBlock = Object.fromEntries(blocks.filter((b) => b.block).map((b) => [b.block, b.counts]));
      const total = {};
      for (const b of blocks) for (const [status, n] of Object.entries(b.counts)) total[status] = (total[status] || 0) + n;
      const terminal = ['succeeded', 'failed', 'cancelled'].includes(run.status);
      fill(header,
        h('h1', {}, `${run.workflow_name}@${run.workflow_version}`),
        h('p', {}, h('code', {}, run.run_id), ' ', badge(run.status), ' ', duration(run.started_at, run.finished_at)),
        run.error ? h('p', { class: 'error' }, run.error) : null,
        h('p', {}, counts(total)),
        h('div', { class: 'actions' },
          !terminal ? h('button', { id: 'cancel', onclick: () => api(`/runs/${runId}/cancel`, { method: 'POST' }).then(render, failure) }, 'Cancel') : null,
          ['failed', 'cancelled'].includes(run.status) ? h('button', { id: 'redrive', onclick: () => api(`/runs/${runId}/redrive`, { method: 'POST' }).then(() => { follow(); render(); }, failure) }, 'Redrive') : null));
      // Built aside, then swapped in whole: the page never shows half a tree.
      const fresh = h('div');
      await children(fresh, 'top', byBlock, null, top);
      tree.replaceChildren(...fresh.childNodes);
      performance.mark('braid:run-rendered');
    } finally {
      rendering = false;
      if (again) { again = false; render(); }
    }
  };

  let stopEvents = () => {};
  let pending = null;
  const follow = () => {
    stopEvents();
    stopEvents = followEvents(runId, () => {
      if (!pending) pending = setTimeout(() => { pending = null; render().catch(() => {}); }, 300);
    });
  };
  await render();
  if (!['succeeded', 'failed', 'cancelled'].includes(run.status)) follow();
  leavePage = () => { stopEvents(); clearTimeout(pending); };
}

async function stepPage(runId, stepId) {
  const [step, progress] = await Promise.all([api(`/runs/${runId}/steps/${stepId}`), api(`/runs/${runId}/blocks`)]);
  // The agent's deployed version, from what the run pinned.
  const pinned = Object.values(progress.run.pinned_agents || {}).find((pin) => pin.digest === step.agent_digest);
  const field = (name, value) => value === null || value === undefined ? null : h('tr', {}, h('th', {}, name), h('td', {}, String(value)));
  show(
    h('p', {}, h('a', { href: `#/runs/${runId}` }, '← run')),
    h('h1', {}, step.step_key || step.step_id, ' ', badge(step.status)),
    h('table', { class: 'fields' },
      field('outcome', step.outcome), field('attempt', step.attempt),
      field('agent', step.agent_name && (pinned && pinned.version ? `${step.agent_name}@${pinned.version}` : step.agent_name)),
      field('agent digest', step.agent_digest), field('host', step.host_id),
      field('queued', step.queued_us !== null ? `${step.queued_us} µs` : null),
      field('instantiate', step.instantiate_us !== null ? `${step.instantiate_us} µs` : null),
      field('execute', step.execute_us !== null ? `${step.execute_us} µs` : null),
      field('fuel', step.fuel_consumed), field('peak memory', step.memory_peak_bytes !== null ? `${step.memory_peak_bytes} bytes` : null),
      field('started', step.started_at), field('finished', step.finished_at)),
    step.error ? h('section', {}, h('h2', {}, 'Error'), h('p', { class: 'error', id: 'step-error' }, step.error)) : null,
    h('h2', {}, 'Input'), json(step.input),
    h('h2', {}, 'Output'), json(step.output),
    h('h2', {}, 'Logs'),
    h('table', { id: 'logs' }, step.logs.map((l) => h('tr', {}, h('td', { class: 'muted' }, l.source), h('td', {}, l.level), h('td', {}, l.message)))),
    step.http_calls.length ? [h('h2', {}, 'Outbound HTTP'),
      h('table', {}, step.http_calls.map((c) => h('tr', {}, h('td', {}, `${c.method} ${c.scheme}://${c.host}:${c.port}${c.path}`), h('td', {}, c.status ?? c.error ?? ''))))] : null);
}

async function workflowsPage() {
  const { workflows } = await api('/workflows');
  show(h('h1', {}, 'Workflows'), h('table', {}, h('tr', {}, ['workflow', 'version', 'digest', 'deployed'].map((c) => h('th', {}, c))),
    workflows.map((w) => h('tr', {}, h('td', {}, w.name), h('td', {}, h('a', { href: `#/workflows/${w.name}/${w.version}` }, w.version)),
      h('td', { class: 'muted' }, w.digest), h('td', {}, new Date(w.created_at).toLocaleString())))));
}

async function workflowPage(name, version) {
  const workflow = await api(`/workflows/${name}/${version}`);
  const { runs } = await api(`/runs?workflow=${encodeURIComponent(name)}&limit=50`);
  show(h('h1', {}, `${name}@${version}`), h('p', { class: 'muted' }, workflow.digest),
    h('h2', {}, 'Runs of this version'),
    h('ul', {}, runs.filter((r) => r.workflow_version === version).map((r) => h('li', {}, h('a', { href: `#/runs/${r.id}` }, r.id), ' ', badge(r.status)))),
    h('h2', {}, 'Definition'), json(workflow.definition));
}

async function agentsPage() {
  const { agents } = await api('/agents');
  show(h('h1', {}, 'Agents'), h('table', {}, h('tr', {}, ['agent', 'version', 'digest', 'size', 'deployed'].map((c) => h('th', {}, c))),
    agents.map((a) => h('tr', {}, h('td', {}, a.name), h('td', {}, h('a', { href: `#/agents/${a.name}/${a.version}` }, a.version)), h('td', { class: 'muted' }, a.digest),
      h('td', {}, `${(a.size_bytes / 1024).toFixed(0)} KiB`), h('td', {}, new Date(a.created_at).toLocaleString())))));
}

// One agent version and the recent runs that pinned it (by digest).
async function agentPage(name, version) {
  const [agent, { runs }] = await Promise.all([api(`/agents/${name}/${version}`), api('/runs?limit=200')]);
  const used = runs.filter((r) => Object.values(r.pinned_agents || {}).some((pin) => pin.digest === agent.digest));
  show(h('h1', {}, `${name}@${version}`),
    h('table', { class: 'fields' }, h('tr', {}, h('th', {}, 'digest'), h('td', {}, agent.digest)),
      h('tr', {}, h('th', {}, 'size'), h('td', {}, `${agent.size_bytes} bytes`)),
      h('tr', {}, h('th', {}, 'deployed'), h('td', {}, new Date(agent.created_at).toLocaleString()))),
    h('h2', {}, 'Recent runs that used it'),
    used.length ? h('ul', {}, used.map((r) => h('li', {}, h('a', { href: `#/runs/${r.id}` }, r.id), ` ${r.workflow_name}@${r.workflow_version} `, badge(r.status))))
      : h('p', { class: 'muted' }, 'none of the last 200 runs'));
}

async function hostsPage() {
  const { hosts } = await api('/hosts');
  show(h('h1', {}, 'Hosts'), h('table', {}, h('tr', {}, ['host', 'role', 'heartbeat', 'slots', 'runs', 'units taken', 'units offered'].map((c) => h('th', {}, c))),
    hosts.map((x) => h('tr', {}, h('td', {}, x.host_id), h('td', {}, x.role), h('td', {}, new Date(x.heartbeat_at).toLocaleTimeString()),
      h('td', {}, `${x.slots_in_use}/${x.max_instances}`), h('td', {}, x.runs_owned), h('td', {}, x.units_taken), h('td', {}, x.units_offered)))));
}

function route() {
  leavePage();
  leavePage = () => {};
  const path = (location.hash.slice(1) || '/runs').split('?')[0];
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  let page;
  if (parts[0] === 'runs' && parts[2] === 'steps' && parts[3]) page = stepPage(parts[1], parts[3]);
  else if (parts[0] === 'runs' && parts[1]) page = runPage(parts[1]);
  else if (parts[0] === 'workflows' && parts[2]) page = workflowPage(parts[1], parts[2]);
  else if (parts[0] === 'workflows') page = workflowsPage();
  else if (parts[0] === 'agents' && parts[2]) page = agentPage(parts[1], parts[2]);
  else if (parts[0] === 'agents') page = agentsPage();
  else if (parts[0] === 'hosts') page = hostsPage();
  else page = runsPage();
  page.catch(failure);
}

window.addEventListener('hashchange', route);
route();
