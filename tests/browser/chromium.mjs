// Debian's headless Chromium (the system's /usr/bin/chromium, or $CHROMIUM: never a downloaded
// browser), driven by playwright-core, for the admin pages' scripts: `open(url)` loads a page in a
// fresh profile and collects what a reader would notice (console errors and warnings, failed
// requests, every URL the page loaded); `close()` removes the profile.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export async function open(url) {
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
  const close = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, page, response, problems, loaded, close };
}
