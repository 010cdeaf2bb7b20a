// Loads the admin listener's home page in Debian's headless Chromium (chromium.mjs), saves a full-page
// screenshot, follows every link on the page, and prints what a reader sees as one JSON line: the
// HTTP status, console errors and warnings, every URL the page itself loaded, the version, uptime,
// configuration hash and listeners shown, each route row's cells, and each link with the status it
// answers.
//
// usage: node admin_home.mjs <url> <screenshot.png>
import { open } from './chromium.mjs';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node admin_home.mjs <url> <screenshot.png>');
  process.exit(2);
}

const { context, page, response, problems, loaded, close } = await open(url);
try {
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
  await close();
}
