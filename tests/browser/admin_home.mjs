// Loads the admin listener's home page in Debian's headless Chromium, driven by playwright-core (no
// browser is ever downloaded: the system's /usr/bin/chromium, or $CHROMIUM), saves a full-page
// screenshot, follows every link on the page, and prints what a reader sees as one JSON line: the
// HTTP status, console errors and warnings, every URL the page itself loaded, the version, uptime,
// configuration hash and listeners shown, each route row's cells, and each link with the status it
// answers.
//
// usage: node admin_home.mjs <url> <screenshot.png>
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node admin_home.mjs <url> <screenshot.png>');
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), 'botbridge-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run',
  ],
  viewport: { width: 1200, height: 900 },
  timeout: 30000,
});
try {
  const page = context.pages()[0] ?? await context.newPage();
  const problems = [];
  const loaded = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()}`));
  page.on('request', (r) => loaded.push(r.url()));
  const response = await page.goto(url, { waitUntil: 'load', timeout: 15000 });
  const shown = async (sel) => (await page.$(sel))?.innerText() ?? null;
  const routes = await page.$$eval('tr[data-route]', (rows) => rows.map((r) => ({
    route: r.dataset.route,
    cells: [...r.querySelectorAll('td')].map((td) => td.innerText),
    visible: r.checkVisibility(),
  })));
  const hrefs = await page.$$eval('a[href]', (as) => as.map((a) => a.getAttribute('href')));
  await page.screenshot({ path: screenshot, fullPage: true });
  const links = [];
  for (const href of hrefs) {
    const answer = await context.request.get(new URL(href, url).toString());
    links.push({ href, status: answer.status() });
  }
  console.log(JSON.stringify({
    status: response.status(),
    title: await page.title(),
    problems,
    loaded,
    version: await shown('#version'),
    uptime: await shown('#uptime'),
    hash: await shown('#hash'),
    chat: await shown('#chat-listener'),
    admin: await shown('#admin-listener'),
    routes,
    links,
  }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
