// Loads the admin listener's migration report in Debian's headless Chromium (chromium.mjs), saves
// a full-page screenshot, and prints what a reader of the page sees as one JSON line:
// the HTTP status, console errors and warnings, every URL the page loaded, and per route section
// its name, match rate, whether the rate is visible, and the points of its chart.
//
// usage: node migration.mjs <url> <screenshot.png>
import { open } from './chromium.mjs';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node migration.mjs <url> <screenshot.png>');
  process.exit(2);
}

const { page, response, problems, loaded, close } = await open(url);
try {
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
  await close();
}
