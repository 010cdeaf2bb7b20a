// Microsoft's Direct Line client (botframework-directlinejs) in Node, against a Direct Line server:
// says "hi", waits for the bot's replies to it, clicks the first button of the first card or
// suggested actions, waits for the replies to that, and prints what it saw as one JSON line.
//
//   node directline.mjs <domain, e.g. http://127.0.0.1:8080/v3/directline> <secret> <websocket|polling>
//
// Node has no XMLHttpRequest (DirectLineJS's transport) and Node 20 no WebSocket: `xhr2` and `ws`
// stand in for the browser's.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
globalThis.XMLHttpRequest = require('xhr2');
globalThis.WebSocket = require('ws');
const { DirectLine, ConnectionStatus } = require('botframework-directlinejs');

const [domain, secret, mode] = process.argv.slice(2);
const user = { id: 'dl-user-1', name: 'Ann' };
const seen = [];
const statuses = [];
const dl = new DirectLine({ secret, domain, webSocket: mode === 'websocket', pollingInterval: 300 });

dl.connectionStatus$.subscribe((s) => statuses.push(ConnectionStatus[s]));
dl.activity$.subscribe((a) => seen.push(a));

const fail = (why) => {
  console.log(JSON.stringify({ error: why, statuses, seen }));
  process.exit(1);
};
setTimeout(() => fail('timed out'), 20000);

const post = (activity) =>
  new Promise((resolve, reject) => dl.postActivity(activity).subscribe(resolve, reject));

// The bot's replies to `id`, once `n` of them arrived (a second's quiet after the first).
async function repliesTo(id) {
  for (let waited = 0; waited < 15000; waited += 100) {
    const replies = seen.filter((a) => a.replyToId === id);
    if (replies.length > 0) {
      await new Promise((r) => setTimeout(r, 1000));
      return seen.filter((a) => a.replyToId === id);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return fail(`no reply to ${id}`);
}

const summary = (a) => ({
  text: a.text,
  from: a.from && a.from.role,
  cards: (a.attachments || []).map((c) => ({
    contentType: c.contentType,
    text: c.content && c.content.text,
    buttons: ((c.content && c.content.buttons) || []).map((b) => ({ type: b.type, title: b.title, value: b.value })),
  })),
  suggested: ((a.suggestedActions && a.suggestedActions.actions) || []).map((b) => b.title),
});

try {
  const first = await post({ type: 'message', from: user, text: 'hi', channelData: { clientActivityID: 'c-1' } });
  const replies = await repliesTo(first);
  const buttons = replies.flatMap((a) =>
    (a.attachments || []).flatMap((c) => (c.content && c.content.buttons) || []).concat(
      (a.suggestedActions && a.suggestedActions.actions) || [],
    ),
  );
  if (buttons.length === 0) fail('no button in the replies');
  const b = buttons[0];
  // What Web Chat sends for a click: an imBack says its value; a postBack sends it as `value`.
  const click =
    b.type === 'imBack'
      ? { type: 'message', from: user, text: b.value }
      : { type: 'message', from: user, value: b.value, text: undefined };
  const second = await post(click);
  const after = await repliesTo(second);
  const echo = seen.find((a) => a.id === first);
  console.log(
    JSON.stringify({
      first,
      second,
      echo: echo && { text: echo.text, channelData: echo.channelData, from: echo.from },
      replies: replies.map(summary),
      clicked: b,
      after: after.map(summary),
      statuses,
    }),
  );
  dl.end();
  process.exit(0);
} catch (e) {
  fail(String(e && (e.message || e.status || e)));
}
