//! The canonical chat model every dialect parses into and renders from.
//!
//! A request from any client becomes one [`ChatRequest`]; a backend's answer becomes one [`ChatAnswer`].
//! Strings borrow from the bytes they were parsed from where they can (`Cow`), so a round trip through
//! the proxy copies as little as possible. Nothing here knows about HTTP, sockets or pingora.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// The kind of a media message: a picture, video, sound or document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    File,
}

impl MediaKind {
    /// The kind's name (`image`, `video`, `audio`, `file`), as the dialects that spell it so write it.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::File => "file",
        }
    }
}

/// What the user sent: one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Content<'a> {
    /// A typed text message.
    Text(Cow<'a, str>),
    /// A picture, video, sound or document, by URL.
    Media { kind: MediaKind, url: Cow<'a, str> },
    /// A link the user shared.
    Url(Cow<'a, str>),
    /// A button click: the button's payload.
    Payload(Cow<'a, str>),
    /// A request to start a named flow of the bot.
    FlowTrigger {
        flow_id: Cow<'a, str>,
        close_flows: Option<bool>,
    },
}

/// One message from a user, in no vendor's dialect.
#[derive(Debug, Clone)]
pub struct ChatRequest<'a> {
    /// The user's stable identifier, as the caller's dialect names it.
    pub user_id: Cow<'a, str>,
    /// What the user sent.
    pub content: Content<'a>,
    /// The business (channel) the message is for, when the client named one.
    pub business_id: Option<i64>,
    /// The vendor's numeric message type as the client sent it, for dialects that have one.
    pub message_type: i64,
    /// The client's own request id, if it sent one.
    pub request_id: Option<Cow<'a, str>>,
    /// The client's metadata object, passed on as is.
    pub metadata: Option<&'a RawValue>,
    /// The client's original payload object, passed on as is to bots that take the same payload, so
    /// properties no other dialect knows reach them.
    pub raw_payload: Option<&'a RawValue>,
    /// Async mode (a callback URL the caller named): where the bot's messages are delivered instead
    /// of the answer. Read by the shell only; no bot dialect renders it.
    pub callback_url: Option<Cow<'a, str>>,
}

impl ChatRequest<'_> {
    /// The caller's own request id, if it sent one that can travel as a header: a caller that sent
    /// one will look for it, so it goes to the bot and back instead of an id the proxy makes up.
    pub fn caller_request_id(&self) -> Option<&str> {
        self.request_id
            .as_deref()
            .filter(|r| request_id_is_sane(r.as_bytes()))
    }
}

/// Whether a request id can be passed on as a header: 1–128 visible ASCII characters.
pub fn request_id_is_sane(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// A button offered to the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Button<'a> {
    /// The label shown to the user.
    pub title: Cow<'a, str>,
    /// What the bot receives when the user clicks it; `None` means the title.
    pub payload: Option<Cow<'a, str>>,
}

impl Button<'_> {
    /// The payload a click sends: the explicit payload, or else the title.
    pub fn payload_or_title(&self) -> &str {
        self.payload.as_deref().unwrap_or(&self.title)
    }
}

/// One message of the bot's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<'a> {
    /// Plain text.
    Text(Cow<'a, str>),
    /// A question with buttons to choose from.
    Question {
        title: Cow<'a, str>,
        buttons: Vec<Button<'a>>,
    },
    /// A single button on its own.
    Button(Button<'a>),
    /// A link, with an optional label and title.
    Url {
        url: Cow<'a, str>,
        text: Option<Cow<'a, str>>,
        title: Option<Cow<'a, str>>,
    },
    /// A picture, video, sound or document, by URL.
    Media { kind: MediaKind, url: Cow<'a, str> },
}

/// Which dialect a backend's original message objects are in: that dialect's name. Each bot dialect
/// tags the messages it keeps and recognises only its own tag, so a new dialect needs no change here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawKind(pub &'static str);

/// The bot's whole answer to one request.
#[derive(Debug, Clone, Default)]
pub struct ChatAnswer<'a> {
    /// The replies the user sees, in order. Presentation-only messages (typing, wait) are not here.
    pub replies: Vec<Reply<'a>>,
    /// Messages the backend sent that have no canonical form (dropped when translating).
    pub dropped: usize,
    /// The backend's original message objects, every one in order, for a caller of the same dialect:
    /// same-dialect fronting renders these verbatim and loses nothing.
    pub raw: Option<(RawKind, Vec<&'a RawValue>)>,
    /// The bot's own ids and conversation state, when the backend reported them.
    pub bot_id: Option<Cow<'a, str>>,
    pub channel_id: Option<Cow<'a, str>>,
    pub conversation_id: Option<Cow<'a, str>>,
    pub conversation_end: Option<bool>,
}
