// A test Direct Line 3.0 service with a real Bot Framework bot behind it, for the proxy's
// "Direct Line bot" backend to talk to as a client. It shares no code with the proxy.
//
//   node dl_bot.mjs <port> <secret>
//
// Listens on 127.0.0.1:<port> (0 picks a free one), prints `ready <port>` on stdout once serving
// (every other log goes to stderr), and exits when stdin closes or on SIGTERM/SIGINT: keep its
// stdin open (a pipe) for as long as it should run.
//
// Two pieces:
// * The Direct Line side is the npm package `offline-directline` (an emulator of the Direct Line
//   channel as an express router), mounted at /v3 so that its `/directline/...` routes answer at
//   `/v3/directline/...`. Around it this file adds what a real client needs and the package lacks:
//   - `Authorization: Bearer <secret or token>` on every call (403 {"error":{"code":"Forbidden"}}
//     otherwise); the secret may do everything, the token a conversation's start returned only
//     calls on that conversation;
//   - Start Conversation answers 201 {conversationId, token, expires_in, streamUrl} (the package
//     answers {conversationId, expiresIn} with the bot's status), and a conversation unknown here
//     answers 404 with an ErrorResponse;
//   - GET /v3/directline/conversations/{id}[?watermark=] (reconnect: a fresh streamUrl);
//   - tokens that expire after `expires_in` (403 {"error":{"code":"TokenExpired"}} after that) and
//     POST /v3/directline/tokens/refresh with a conversation's token (a new one for the same
//     conversation, as the real service gives; the old one is revoked at once, so that a client
//     that kept it is caught);
//   - GET /v3/test/stats: how many conversations were started and tokens refreshed (for tests);
//   - the WebSocket stream at streamUrl (`t=` query, or the Authorization header), which pushes
//     {activities, watermark} ActivitySets read from the package's own history, and an empty
//     message every 10 s as a keep-alive, as the real service does;
//   - watermarks are strings, as in the real service (the package's are numbers);
//   - a bot that answers an error (or no answer in 15 s) gives 502 (504)
//     {"error":{"code":"BotError",...}} to Send Activity, as the real service does.
//   The package's bot-facing Connector routes (`/v3/conversations/...`) sit at /v3/v3/... here, so
//   the serviceUrl given to the bot is http://127.0.0.1:<port>/v3.
// * The bot is a botbuilder ActivityHandler behind a CloudAdapter with authentication disabled
//   (no app id/password), on its own free port, receiving activities at /api/messages and replying
//   through the Connector API of the Direct Line side with context.sendActivity (so its replies
//   carry replyToId).
//
// The bot: a postBack (a message with `value`) -> "You picked: <value>"; "Red"/"Yes"/"No" ->
// "You said: <text>"; "twice" -> "First reply" at once and "Second reply" 1.5 s later; "slow" -> nothing at once, then "Sorry for the wait!" 1.5 s after its turn
// ended (proactively, still replyToId = the message's id), so Send Activity answers at once;
// "fail" -> the turn throws (Send Activity answers 502 BotError); anything else -> five replies:
// a text, a hero card with an imBack and a postBack button, a text with suggested actions, an
// image attachment, and an Adaptive Card.
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';

// offline-directline logs with console.log; stdout is only for the `ready` line.
console.log = (...args) => console.error(...args);

const require = createRequire(import.meta.url);
const express = require('express');
const { getRouter } = require('offline-directline');
const { WebSocketServer } = require('ws');
const {
  ActivityHandler,
  ActionTypes,
  CardFactory,
  CloudAdapter,
  ConfigurationBotFrameworkAuthentication,
  MessageFactory,
  TurnContext,
} = require('botbuilder');

const [portArg, secret] = process.argv.slice(2);
if (portArg === undefined || !/^\d+$/.test(portArg) || !secret) {
  console.error('usage: node dl_bot.mjs <port> <secret>');
  process.exit(2);
}
const HOST = '127.0.0.1';
// Token lifetime in seconds (Direct Line's is 1800); DL_TOKEN_SECONDS shortens it for tests of
// the client's refresh.
const EXPIRES_IN = Number(process.env.DL_TOKEN_SECONDS || 1800);
const BOT_TIMEOUT_MS = 15000;

// One bad promise in the package (e.g. the bot unreachable) must not end the server.
process.on('unhandledRejection', (err) => console.error('dl_bot: unhandled rejection:', err));

// ---------------------------------------------------------------------------------------------
// The bot.

const adapter = new CloudAdapter(new ConfigurationBotFrameworkAuthentication({}));
// No onTurnError: an error in a turn makes the adapter answer 500, which Direct Line turns into 502.

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class TestBot extends ActivityHandler {
  constructor() {
    super();
    this.onMessage(async (context, next) => {
      const activity = context.activity;
      const text = (activity.text || '').trim();
      if (activity.value !== undefined && activity.value !== null) {
        const value = typeof activity.value === 'string' ? activity.value : JSON.stringify(activity.value);
        await context.sendActivity(`You picked: ${value}`);
      } else if (['Red', 'Yes', 'No'].includes(text)) {
        await context.sendActivity(`You said: ${text}`);
      } else if (text === 'fail') {
        throw new Error('the test bot was asked to fail');
      } else if (text === 'twice') {
        // One reply now and one 1.5 s after the turn (as "slow"), for replies that arrive apart.
        await context.sendActivity('First reply');
        const reference = TurnContext.getConversationReference(activity);
        setTimeout(() => {
          adapter
            .continueConversationAsync('', reference, async (later) => {
              later.activity.id = reference.activityId;
              await later.sendActivity('Second reply');
            })
            .catch((err) => console.error('dl_bot: second reply failed:', err));
        }, 1500);
      } else if (text === 'slow') {
        // After the turn: the turn's context is revoked by then, so continue the conversation.
        const reference = TurnContext.getConversationReference(activity);
        setTimeout(() => {
          adapter
            .continueConversationAsync('', reference, async (later) => {
              // The continuation activity has an id of its own; replies should name the message.
              later.activity.id = reference.activityId;
              await later.sendActivity('Sorry for the wait!');
            })
            .catch((err) => console.error('dl_bot: slow reply failed:', err));
        }, 1500);
      } else {
        await context.sendActivity('Hello from the Bot Framework test bot!');
        await context.sendActivity(
          MessageFactory.attachment(
            CardFactory.heroCard('Pick one', undefined, [
              { type: ActionTypes.ImBack, title: 'Red', value: 'Red' },
              { type: ActionTypes.PostBack, title: 'Blue', value: 'BLUE' },
            ], { text: 'Pick one' }),
          ),
        );
        await context.sendActivity(MessageFactory.suggestedActions(['Yes', 'No'], 'Suggestions'));
        await context.sendActivity(
          MessageFactory.attachment({ contentType: 'image/png', contentUrl: 'https://example.com/cat.png', name: 'cat.png' }),
        );
        await context.sendActivity(
          MessageFactory.attachment(
            CardFactory.adaptiveCard({
              type: 'AdaptiveCard',
              $schema: 'http://adaptivecards.io/schemas/adaptive-card.json',
              version: '1.3',
              body: [{ type: 'TextBlock', text: 'Adaptive says hi', wrap: true }],
            }),
          ),
        );
      }
      await next();
    });
  }
}
const bot = new TestBot();

const botApp = express();
botApp.use(express.json({ limit: '1mb' }));
botApp.post('/api/messages', (req, res) => {
  adapter.process(req, res, (context) => bot.run(context)).catch((err) => {
    console.error('dl_bot: bot error:', err);
    if (!res.headersSent) res.status(500).end();
  });
});

const listen = (app, port) =>
  new Promise((resolve, reject) => {
    const server = app.listen(port, HOST, () => resolve(server));
    server.on('error', reject);
  });

const botServer = await listen(botApp, 0);
const botUrl = `http://${HOST}:${botServer.address().port}/api/messages`;

// ---------------------------------------------------------------------------------------------
// The Direct Line side.

const conversations = new Map(); // conversationId -> { token }
const tokens = new Map(); // token -> { conversationId, expires (ms since the epoch) }
const stats = { started: 0, refreshed: 0 };
const issue = (conversationId) => {
  const token = newToken();
  tokens.set(token, { conversationId, expires: Date.now() + EXPIRES_IN * 1000 });
  return token;
};

const newToken = () => randomBytes(24).toString('base64url');
const errorBody = (code, message) => ({ error: { code, message } });
const forbidden = (res, [code, message]) => res.status(403).json(errorBody(code, message));

let baseHttp; // http://127.0.0.1:<port>, once listening
const streamUrl = (conversationId, token, watermark = '-') =>
  `${baseHttp.replace(/^http/, 'ws')}/v3/directline/conversations/${encodeURIComponent(conversationId)}` +
  `/stream?watermark=${encodeURIComponent(watermark)}&t=${encodeURIComponent(token)}`;

// Who may call: the secret, or an unexpired token of the conversation named in the path. Null, or
// why not as [code, message].
function authorize(credential, conversationId) {
  const no = (message) => ['Forbidden', message];
  if (!credential) return no('Authorization: Bearer <secret or token> is required');
  if (credential === secret) return null;
  const t = tokens.get(credential);
  if (t === undefined) return no('the secret or token is not valid');
  if (t.expires <= Date.now()) return ['TokenExpired', 'Token expired'];
  if (conversationId === undefined) return no('a conversation token cannot start a conversation');
  if (conversationId !== t.conversationId) return no('the token is not valid for this conversation');
  return null;
}

const bearer = (header) => {
  const m = /^Bearer\s+(.+)$/i.exec(header || '');
  return m ? m[1].trim() : '';
};

// Replaces the package's response (status, body) with what `rewrite` makes of it.
function rewriteResponse(rewrite) {
  return (req, res, next) => {
    const send = res.send;
    res.send = function (body) {
      res.send = send;
      let parsed = body;
      if (Buffer.isBuffer(parsed)) parsed = parsed.toString('utf8');
      if (typeof parsed === 'string') {
        try {
          parsed = parsed === '' ? undefined : JSON.parse(parsed);
        } catch {
          // not JSON: leave it a string
        }
      }
      // An ErrorResponse of ours (e.g. the deadline's) goes out as it is.
      const [status, out] =
        parsed && typeof parsed === 'object' && parsed.error ? [res.statusCode, parsed] : rewrite(res.statusCode, parsed, req);
      res.status(status);
      return out === undefined ? res.end() : res.json(out);
    };
    next();
  };
}

// A request the package never answers (the bot unreachable) still gets an answer.
function botDeadline(req, res, next) {
  const timer = setTimeout(() => {
    if (!res.headersSent) res.status(504).json(errorBody('BotError', 'Failed to send activity: bot timed out'));
  }, BOT_TIMEOUT_MS);
  res.on('close', () => clearTimeout(timer));
  res.on('finish', () => clearTimeout(timer));
  next();
}

const app = express();
app.disable('x-powered-by');

// The package's bot-facing Connector API; nothing else of it at /v3/v3.
app.use('/v3/v3/directline', (req, res) => res.status(404).json(errorBody('NotFound', 'no such route')));

// Refresh Token: a conversation's unexpired token for a new one (the secret cannot be refreshed).
app.post('/v3/directline/tokens/refresh', (req, res) => {
  const credential = bearer(req.headers.authorization);
  const t = tokens.get(credential);
  if (t === undefined) return forbidden(res, ['Forbidden', 'only a conversation token can be refreshed']);
  const why = authorize(credential, t.conversationId);
  if (why) return forbidden(res, why);
  const token = issue(t.conversationId);
  // The old token ends here (stricter than the real service, which lets it run out): a client
  // that kept using it would be refused.
  tokens.delete(credential);
  conversations.set(t.conversationId, { token });
  stats.refreshed += 1;
  res.status(200).json({ conversationId: t.conversationId, token, expires_in: EXPIRES_IN });
});
app.get('/v3/test/stats', (req, res) => res.status(200).json(stats));

const dl = express.Router();
dl.use((req, res, next) => {
  res.header('Access-Control-Allow-Origin', '*');
  res.header('Access-Control-Allow-Methods', 'GET, POST, OPTIONS');
  res.header('Access-Control-Allow-Headers', 'Origin, Content-Type, Accept, Authorization, x-ms-bot-agent');
  if (req.method === 'OPTIONS') return res.status(200).end();
  const m = /^\/conversations\/([^/]+)/.exec(req.path);
  const conversationId = m ? decodeURIComponent(m[1]) : undefined;
  const why = authorize(bearer(req.headers.authorization), conversationId);
  if (why) return forbidden(res, why);
  if (conversationId !== undefined && !conversations.has(conversationId)) {
    return res.status(404).json(errorBody('BadArgument', 'Conversation not found'));
  }
  next();
});
// Parsed here, so that a body that is not JSON gets a 400 rather than a BotError (the package's
// parser then leaves it as it is).
dl.use(express.json({ limit: '1mb' }));

// Start Conversation.
dl.post(
  '/conversations',
  botDeadline,
  rewriteResponse((status, body) => {
    if (!body || typeof body.conversationId !== 'string') {
      return [502, errorBody('BotError', 'Failed to start the conversation')];
    }
    const token = issue(body.conversationId);
    conversations.set(body.conversationId, { token });
    stats.started += 1;
    return [
      201,
      { conversationId: body.conversationId, token, expires_in: EXPIRES_IN, streamUrl: streamUrl(body.conversationId, token) },
    ];
  }),
);

// Reconnect: the conversation again, with a fresh stream URL from `watermark`.
dl.get('/conversations/:conversationId', (req, res) => {
  const { conversationId } = req.params;
  const { token } = conversations.get(conversationId);
  const watermark = typeof req.query.watermark === 'string' && req.query.watermark !== '' ? req.query.watermark : '-';
  res.status(200).json({ conversationId, token, expires_in: EXPIRES_IN, streamUrl: streamUrl(conversationId, token, watermark) });
});

// Send Activity: the package answers with the bot's status.
dl.post(
  '/conversations/:conversationId/activities',
  botDeadline,
  rewriteResponse((status, body) => {
    if (status >= 200 && status < 300 && body && body.id) return [200, { id: body.id }];
    return [502, errorBody('BotError', `Failed to send activity: bot returned an error (HTTP ${status})`)];
  }),
);

// Get Activities: watermarks as strings.
dl.get(
  '/conversations/:conversationId/activities',
  (req, res, next) => {
    const { watermark } = req.query;
    if (watermark === undefined || watermark === '' || (typeof watermark === 'string' && /^\d+$/.test(watermark))) return next();
    res.status(400).json(errorBody('BadArgument', 'invalid watermark'));
  },
  rewriteResponse((status, body) => {
    if (status === 200 && body && Array.isArray(body.activities)) {
      return [200, { activities: body.activities, watermark: String(body.watermark) }];
    }
    return [status === 400 ? 404 : status, errorBody('BadArgument', 'Conversation not found')];
  }),
);

dl.post('/conversations/:conversationId/upload', (req, res) =>
  res.status(501).json(errorBody('NotImplemented', 'uploads are not supported by this test server')),
);

let router; // the package's, made once the port is known (its serviceUrl names it)
// What `dl` passes on (next) the package's router answers: its `/directline/...` under /v3.
app.use('/v3/directline', dl);
app.use('/v3', (req, res, next) => router(req, res, next));
app.use((req, res) => res.status(404).json(errorBody('NotFound', `no such route: ${req.method} ${req.path}`)));
// e.g. a body that is not JSON
app.use((err, req, res, next) => {
  if (res.headersSent) return next(err);
  const status = err.status || err.statusCode || 500;
  res.status(status).json(errorBody(status < 500 ? 'BadArgument' : 'ServiceError', err.message || String(err)));
});

let server;
try {
  server = await listen(app, Number(portArg));
} catch (err) {
  console.error(`dl_bot: cannot listen on ${HOST}:${portArg}: ${err.message}`);
  process.exit(1);
}
const port = server.address().port;
baseHttp = `http://${HOST}:${port}`;
router = getRouter(`${baseHttp}/v3`, botUrl);

// ---------------------------------------------------------------------------------------------
// The WebSocket stream: ActivitySets from the package's history, read as a polling client would.

const wss = new WebSocketServer({ noServer: true });
const sockets = new Set();

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, baseHttp);
  const m = /^\/v3\/directline\/conversations\/([^/]+)\/stream$/.exec(url.pathname);
  const refuse = (status, text) => {
    socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  };
  if (!m) return refuse(404, 'Not Found');
  const conversationId = decodeURIComponent(m[1]);
  const credential = url.searchParams.get('t') || bearer(req.headers.authorization);
  if (authorize(credential, conversationId)) return refuse(403, 'Forbidden');
  if (!conversations.has(conversationId)) return refuse(404, 'Not Found');
  const start = url.searchParams.get('watermark');
  wss.handleUpgrade(req, socket, head, (ws) => pump(ws, conversationId, /^\d+$/.test(start || '') ? start : ''));
});

function pump(ws, conversationId, watermark) {
  sockets.add(ws);
  let open = true;
  const keepAlive = setInterval(() => ws.readyState === ws.OPEN && ws.send(''), 10000);
  ws.on('close', () => {
    open = false;
    clearInterval(keepAlive);
    sockets.delete(ws);
  });
  ws.on('error', () => ws.terminate());
  const url = () =>
    `${baseHttp}/v3/directline/conversations/${encodeURIComponent(conversationId)}/activities?watermark=${watermark}`;
  (async () => {
    while (open) {
      try {
        const res = await fetch(url(), { headers: { Authorization: `Bearer ${secret}` } });
        const set = await res.json();
        if (res.ok && set.activities.length > 0 && open) {
          watermark = set.watermark;
          ws.send(JSON.stringify({ activities: set.activities, watermark: set.watermark }));
        }
      } catch (err) {
        console.error('dl_bot: stream poll failed:', err);
      }
      await pause(100);
    }
  })();
}

// ---------------------------------------------------------------------------------------------

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  for (const ws of sockets) ws.terminate();
  server.close();
  botServer.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.on('error', stop);
process.stdin.resume();

process.stdout.write(`ready ${port}\n`);
console.error(`dl_bot: Direct Line at ${baseHttp}/v3/directline, bot at ${botUrl}`);
