// Microsoft's Web Chat (botframework-webchat's UMD bundle) in Debian's headless Chromium, driven by
// playwright-core (no browser is ever downloaded: the system's /usr/bin/chromium, or $CHROMIUM),
// against a Direct Line server: types "hi" into the send box and sends it, waits for the bot's
// answers, checks the message is shown as sent, clicks "Yes" on the bot's card, waits for the answer
// to that, saves a full-page screenshot and prints what it saw as one JSON line:
//
//   {transcript, buttons, sendFailed, problems, requests, ok, ...}  (and `error` when it failed)
//
// usage: node webchat.mjs <domain, e.g. http://127.0.0.1:8080/v3/directline> <secret> <screenshot.png>
//                         [origin, default http://webchat.botbridge.test] [polling | websocket (default)]
// (polling: Web Chat's Direct Line gets webSocket: false and polls GET …/activities?watermark=)
//
// The test page and the bundle are served by page.route at <origin>, so Web Chat runs cross-origin
// to the Direct Line server and its requests need CORS. While any route is installed, Playwright
// answers every CORS preflight itself (with "allow everything" headers), which would hide what the
// server answers; so the routes are removed once the page is loaded and Web Chat is only started
// after that: every preflight then reaches the server, and Chromium enforces its answers.
// Nothing but the Direct Line server is reachable: every other host name resolves to nothing.
// Chromium is told the server's address is public (as a deployment's is, like the page's): its Local
// Network Access checks would otherwise refuse a public page's requests to a server on loopback.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const args = process.argv.slice(2);
if (/^(polling|websocket)$/.test(args[3] || '')) args.splice(3, 0, undefined); // origin left out
const [domain, secret, screenshot, originArg, modeArg] = args;
if (!domain || !secret || !screenshot || (modeArg && modeArg !== 'polling' && modeArg !== 'websocket')) {
  console.error('usage: node webchat.mjs <domain> <secret> <screenshot.png> [origin] [polling]');
  process.exit(2);
}
const origin = new URL(originArg || 'http://webchat.botbridge.test').origin;
const polling = modeArg === 'polling';
const server = new URL(domain);
const started = Date.now();
const deadline = started + 30000;
const left = () => Math.max(0, deadline - Date.now());
// A Playwright timeout: never 0 (which would mean none), at most `most` ms.
const within = (most = 10000) => Math.max(1, Math.min(left(), most));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const bundle = readFileSync(join(dirname(fileURLToPath(import.meta.url)),
  'node_modules/botframework-webchat/dist/webchat.js'));
// The page records what Web Chat's store sees (Direct Line actions and activities), and waits for
// startWebChat(options) to render Web Chat.
const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>botbridge Web Chat</title>
<link rel="icon" href="data:,">
<style>html, body { height: 100%; margin: 0; } #webchat { height: 100%; max-width: 720px; margin: 0 auto; }</style>
</head>
<body>
<div id="webchat" role="main"></div>
<script src="/webchat.js"></script>
<script>
window.seen = { actions: [], activities: [], rejected: [] };
window.startWebChat = (options) => {
  const store = window.WebChat.createStore({}, () => (next) => (action) => {
    if (/^DIRECT_LINE\\//.test(action.type)) {
      const seen = window.seen;
      if (seen.actions[seen.actions.length - 1] !== action.type) seen.actions.push(action.type);
      if (action.type === 'DIRECT_LINE/POST_ACTIVITY_REJECTED') seen.rejected.push(String(action.payload && (action.payload.message || action.payload)));
    }
    return next(action);
  });
  window.webChatStore = store;
  window.WebChat.renderWebChat({
    directLine: window.WebChat.createDirectLine(options),
    store,
    userID: 'webchat-user-1',
    username: 'Ann',
  }, document.getElementById('webchat'));
};
</script>
</body>
</html>
`;

// What the reader of the page sees: every activity of the transcript in order (who said it, its
// text, for the user's own its send status, its buttons), the suggested actions, and from Web
// Chat's store the activities with their send state.
function snapshot() {
  const text = (el) => (el ? el.innerText.replace(/\s+\n/g, '\n').trim() : '');
  const activities = [...document.querySelectorAll('.webchat__basic-transcript__activity')].map((el) => {
    const fromUser = Boolean(el.querySelector('.webchat__stacked-layout--from-user, .webchat__bubble--from-user'));
    // A card's text is its text blocks (its buttons are listed apart); a message's, its bubble's.
    const contents = [...el.querySelectorAll('.webchat__bubble__content')].map((c) => (c.querySelector('.ac-adaptiveCard')
      ? [...c.querySelectorAll('.ac-textBlock')].map(text).join('\n')
      : text(c))).filter(Boolean);
    const status = el.querySelector('.webchat__activity-status');
    return {
      from: fromUser ? 'user' : 'bot',
      text: contents.length ? contents.join('\n') : text(el.querySelector('.webchat__basic-transcript__activity-body')),
      // e.g. "Sent at December 7 at 3:14 AM | Just now" (what a screen reader says | what is shown)
      status: status ? text(status).split('\n').map((l) => l.trim()).filter(Boolean).join(' | ') : '',
      buttons: [...el.querySelectorAll('button')].map((b) => text(b) || b.getAttribute('aria-label') || b.title).filter(Boolean),
    };
  });
  const suggested = [...document.querySelectorAll('.webchat__suggested-actions button')].map(text);
  const state = window.webChatStore ? window.webChatStore.getState() : {};
  const stored = (state.activities || []).map((a) => ({
    type: a.type,
    role: a.from && a.from.role,
    text: a.text,
    ...(a.value !== undefined ? { value: a.value } : {}),
    ...(a.channelData && a.channelData.postBack ? { postBack: true } : {}), // not shown in the transcript
    state: a.channelData && a.channelData.state,
    clientActivityID: a.channelData && a.channelData.clientActivityID,
    replyToId: a.replyToId,
    attachments: (a.attachments || []).map((c) => c.contentType),
  }));
  return {
    activities,
    suggested,
    stored,
    connectivity: state.connectivityStatus,
    actions: window.seen ? window.seen.actions : [],
    rejected: window.seen ? window.seen.rejected : [],
    sendBox: Boolean(document.querySelector('[data-id="webchat-sendbox-input"]')),
  };
}

const problems = [];
const requests = [];
let last = { activities: [], suggested: [], stored: [], actions: [], rejected: [] };
let clicked = null;
let context;
let page;
let printed = false;

// Long query values (tokens) are shortened in what is printed.
const shorten = (u) => u.replace(/([?&][^=&]+=)([^&]{24})[^&]*/g, '$1$2…');

function report(error) {
  if (printed) return;
  printed = true;
  const transcript = last.activities.map((a) => ({
    from: a.from,
    text: a.text,
    ...(a.from === 'user' ? { status: a.status } : {}),
    ...(a.buttons.length ? { buttons: a.buttons } : {}),
  }));
  const buttons = [...new Set([...last.activities.flatMap((a) => a.buttons), ...last.suggested])];
  const sendFailed = last.activities.some((a) => /send failed/i.test(a.status))
    || last.stored.some((a) => a.state === 'send failed') || last.rejected.length > 0;
  const out = {
    transcript,
    buttons,
    sendFailed,
    problems,
    requests: requests.map((r) => ({ ...r, url: shorten(r.url) })),
    ok: false,
    mode: polling ? 'polling' : 'websocket',
    clicked,
    activities: last.stored,
    directLine: last.actions,
    connectivity: last.connectivity,
    seconds: (Date.now() - started) / 1000,
  };
  if (error) out.error = error;
  out.ok = !error && !sendFailed && problems.length === 0;
  console.log(JSON.stringify(out));
  return out.ok;
}

class Failure extends Error {}

async function look() {
  last = await page.evaluate(snapshot);
  return last;
}

// Looks at the page every 200 ms until `done(snapshot)` holds; fails at the deadline, or as soon as
// `failed(snapshot)` says why.
async function waitUntil(what, done, failed = () => null) {
  for (;;) {
    const s = await look();
    if (done(s)) return s;
    const why = failed(s);
    if (why) throw new Failure(`${why} (waiting for ${what})`);
    if (left() <= 0) throw new Failure(`timed out waiting for ${what}`);
    await sleep(Math.min(200, left()));
  }
}

// The server's address:port pairs, for Chromium's --ip-address-space-overrides.
function serverAddresses() {
  const port = server.port || (server.protocol === 'https:' ? '443' : '80');
  const host = server.hostname;
  const ips = host === 'localhost' ? ['127.0.0.1', '[::1]'] : [host];
  return ips.map((ip) => `${ip}:${port}`);
}

const botSaid = (s, re) => s.activities.some((a) => a.from === 'bot' && re.test(a.text));

async function run() {
  const profile = mkdtempSync(join(tmpdir(), 'botbridge-chromium-'));
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run',
        // No network but the Direct Line server's host (the page's own origin is served by page.route).
        `--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE ${server.hostname}`,
        // The server as a deployment's is, on the public internet like the page: Chromium's Local
        // Network Access checks would refuse a public page's requests to a server on loopback.
        `--ip-address-space-overrides=${serverAddresses().map((a) => `${a}=public`).join(',')}`,
      ],
      viewport: { width: 800, height: 900 },
      timeout: within(30000),
    });
    page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(10000);
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));

    // Every request the page makes, as the network sees it: CORS preflights and WebSockets included.
    const cdp = await context.newCDPSession(page);
    const byId = new Map();
    const outside = (url) => !url.startsWith(`${origin}/`);
    cdp.on('Network.requestWillBeSent', (e) => {
      const r = { method: e.request.method, url: e.request.url };
      byId.set(e.requestId, r);
      if (outside(r.url) && !r.url.startsWith('blob:') && !r.url.startsWith('data:')) requests.push(r);
    });
    cdp.on('Network.responseReceived', (e) => {
      const r = byId.get(e.requestId);
      if (r) r.status = e.response.status;
      if (e.response.status >= 400) problems.push(`HTTP ${e.response.status}: ${r ? r.method : ''} ${shorten(e.response.url)}`);
    });
    cdp.on('Network.loadingFailed', (e) => {
      const r = byId.get(e.requestId);
      const why = e.errorText
        + (e.corsErrorStatus ? ` (CORS ${e.corsErrorStatus.corsError}${e.corsErrorStatus.failedParameter ? ` ${e.corsErrorStatus.failedParameter}` : ''})` : '')
        + (e.blockedReason ? ` (${e.blockedReason})` : '');
      if (r) r.failed = why;
      if (!e.canceled) problems.push(`request failed: ${r ? `${r.method} ${shorten(r.url)}` : e.requestId}: ${why}`);
    });
    const sockets = new Map();
    cdp.on('Network.webSocketCreated', (e) => {
      const r = { method: 'WEBSOCKET', url: e.url, frames: 0 };
      sockets.set(e.requestId, r);
      requests.push(r);
    });
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
      const r = sockets.get(e.requestId);
      if (r) r.status = e.response.status;
    });
    cdp.on('Network.webSocketFrameReceived', (e) => {
      const r = sockets.get(e.requestId);
      if (r) r.frames += 1;
    });
    cdp.on('Network.webSocketFrameError', (e) => problems.push(`websocket frame error: ${e.errorMessage}`));
    cdp.on('Network.webSocketClosed', (e) => {
      const r = sockets.get(e.requestId);
      if (r) r.closed = true;
    });
    await cdp.send('Network.enable');

    const served = { '/index.html': ['text/html; charset=utf-8', html], '/webchat.js': ['text/javascript; charset=utf-8', bundle] };
    await page.route(`${origin}/**`, (route) => {
      const hit = served[new URL(route.request().url()).pathname];
      return hit
        ? route.fulfill({ status: 200, contentType: hit[0], body: hit[1] })
        : route.fulfill({ status: 404, contentType: 'text/plain', body: 'not found' });
    });
    await page.goto(`${origin}/index.html`, { waitUntil: 'load', timeout: within(20000) });
    await page.unrouteAll({ behavior: 'wait' });
    if (!(await page.evaluate(() => Boolean(window.WebChat && window.WebChat.renderWebChat)))) {
      throw new Failure('window.WebChat.renderWebChat is missing: the bundle did not load');
    }

    // createDirectLine (Web Chat 4.18.1) takes DirectLineJS's options: secret, domain, webSocket.
    await page.evaluate((options) => window.startWebChat(options),
      { secret, domain, ...(polling ? { webSocket: false } : {}) });

    // The send box, typed into like a person would, sent with Enter.
    const input = page.locator('[data-id="webchat-sendbox-input"]');
    await input.waitFor({ state: 'visible', timeout: within() });
    await waitUntil('Web Chat to connect', (s) => s.actions.includes('DIRECT_LINE/CONNECT_FULFILLED')
      || s.connectivity === 'connected',
    (s) => (s.actions.includes('DIRECT_LINE/CONNECT_REJECTED') ? 'Web Chat could not connect' : null));
    await input.click({ timeout: within() });
    await input.pressSequentially('hi', { delay: 30, timeout: within() });
    await input.press('Enter', { timeout: within() });

    // The bot's answers to "hi": its greeting, the card and the echo; the user's "hi" shown as sent.
    const userHi = (s) => s.activities.find((a) => a.from === 'user' && a.text === 'hi');
    await waitUntil('the bot to answer "hi"', (s) => userHi(s) && botSaid(s, /you said: hi/i)
      && s.activities.some((a) => a.from === 'bot' && a.buttons.includes('Yes')));
    // Sent: Web Chat got the echo with its channelData.clientActivityID (or the POST's answer).
    const storedHi = (s) => s.stored.find((a) => a.role === 'user' && a.text === 'hi') || {};
    await waitUntil('"hi" to be shown as sent', (s) => storedHi(s).state === 'sent' && !/sending/i.test(userHi(s).status),
      (s) => (storedHi(s).state === 'send failed' || /send failed/i.test(userHi(s).status)
        ? `"hi" was not sent: ${userHi(s).status}` : null));
    await sleep(Math.min(500, left()));
    const before = await look();

    // Click "Yes" on the bot's card, and wait for the bot's answer to it.
    const botCount = before.activities.filter((a) => a.from === 'bot').length;
    const yes = page.locator('.webchat__basic-transcript__activity').getByRole('button', { name: 'Yes', exact: true });
    await yes.last().click({ timeout: within() });
    clicked = 'Yes';
    await waitUntil('the bot to answer the click on "Yes"', (s) =>
      s.activities.filter((a) => a.from === 'bot').length > botCount
      && s.activities.slice(-1)[0].from === 'bot');
    await sleep(Math.min(1000, left())); // the rest of the answer, if any
    await waitUntil('every message to be sent', (s) =>
      s.activities.every((a) => a.from !== 'user' || !/sending/i.test(a.status)));
    const after = await look();
    const reply = after.activities.filter((a) => a.from === 'bot').slice(botCount).map((a) => a.text).join(' ');
    if (!/yes/i.test(reply)) problems.push(`the answer to the click does not mention "Yes": ${reply}`);

    await page.screenshot({ path: screenshot, fullPage: true, timeout: Math.max(left(), 3000) });
    return report(null);
  } catch (e) {
    if (page) {
      try { await Promise.race([look(), sleep(3000)]); } catch { /* the page is gone */ }
      try { await page.screenshot({ path: screenshot, fullPage: true, timeout: 3000 }); } catch { /* none */ }
    }
    report(e instanceof Failure ? e.message : `${e.name}: ${e.message.split('\n')[0]}`);
    return false;
  } finally {
    if (context) await Promise.race([context.close().catch(() => {}), sleep(5000)]);
    rmSync(profile, { recursive: true, force: true });
  }
}

// A last resort, should closing the browser hang.
const watchdog = setTimeout(() => {
  report('timed out');
  process.exit(1);
}, 30000 + 15000);
const ok = await run();
clearTimeout(watchdog);
process.exit(ok ? 0 : 1);
