// Loads the admin listener's migration report in Debian's headless Chromium, driven by
// playwright-core (no browser is ever downloaded: the system's /usr/bin/chromium, or $CHROMIUM),
// saves a full-page screenshot, and prints what a reader of the page sees as one JSON line:
// the HTTP status, console errors and warnings, every URL the page loaded, and per route section
// its name, match rate, whether the rate is visible, and the points of its chart.
//
// usage: node migration.mjs <url> <screenshot.png>
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node migration.mjs <url> <screenshot.png>');
  process.exit(2);
}

// A fresh profile for every run, removed afterwards.
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
  const routes = await page.$$eval('section[data-route]', (sections) => sections.map((s) => {
    const rate = s.querySelector('[data-match-rate]');
    const box = rate?.getBoundingClientRect();
    return {
      route: s.dataset.route,
      heading: s.querySelector('h2')?.innerText ?? null,
      matchRate: rate?.innerText ?? null,
      rateVisible: Boolean(rate?.checkVisibility() && box.width > 0 && box.height > 0),
      chartPoints: s.querySelectorAll('svg circle').length,
      text: s.innerText,
    };
  }));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({
    status: response.status(),
    title: await page.title(),
    problems,
    loaded,
    routes,
  }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
