//! HSL, the Haptik Specification Language: the `{"text", "type", "data"}` bodies of Haptik's current
//! answer shape, rendered from and parsed into canonical replies.
//!
//! Rendering (canonical → HSL):
//! - text → `TEXT` with no quick replies;
//! - question → `TEXT` with one `TEXT_ONLY` quick reply per button (quick replies, not `BUTTON`,
//!   because a question's buttons are answers the user picks, and HSL's `BUTTON` is for actions);
//! - a lone button → `BUTTON` with one `TEXT_ONLY` item;
//! - url → `BUTTON` with one `LINK` item (`APP_ACTION`, `payload.url`);
//! - image → a one-item `CAROUSEL` with no actionables;
//! - video, audio, file → `BUTTON` with one `LINK` item labelled `Open video` / `Open audio` / `Open file`.
//!
//! Parsing (HSL → canonical): `TEXT` → text, or a question when it has quick replies; `BUTTON` →
//! a question of its `TEXT_ONLY` items plus one url per `LINK` item; `CAROUSEL` → one image per item
//! thumbnail plus one url per `LINK` actionable; other types have no canonical form.

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::dialect::bad_answer::Expected;
use crate::error::ProxyError;
use crate::model::{Button, MediaKind, Reply};

#[derive(Serialize)]
pub(crate) struct HslOut<'a> {
    text: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    data: DataOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DataOut<'a> {
    QuickReplies {
        quick_replies: Vec<QuickReplyOut<'a>>,
    },
    Items {
        items: Vec<ItemOut<'a>>,
    },
    Carousel {
        image_aspect_ratio: &'static str,
        width: &'static str,
        items: Vec<CarouselItemOut<'a>>,
    },
}

#[derive(Serialize)]
struct QuickReplyOut<'a> {
    actionable_text: &'a str,
    is_default: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    payload: MessagePayloadOut<'a>,
}

#[derive(Serialize)]
struct MessagePayloadOut<'a> {
    message: &'a str,
    gogo_message: &'static str,
}

#[derive(Serialize)]
struct ItemOut<'a> {
    actionable_text: &'a str,
    location_required: bool,
    uri: &'static str,
    is_default: u8,
    #[serde(rename = "type")]
    kind: &'static str,
    payload: ItemPayloadOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ItemPayloadOut<'a> {
    Url {
        url: &'a str,
        gogo_message: &'static str,
    },
    Message(MessagePayloadOut<'a>),
}

#[derive(Serialize)]
struct CarouselItemOut<'a> {
    thumbnail: ThumbnailOut<'a>,
    title: &'static str,
    sub_title: &'static str,
    description: &'static str,
    actionables: [(); 0],
}

#[derive(Serialize)]
struct ThumbnailOut<'a> {
    image: &'a str,
}

fn quick_reply<'a>(b: &'a Button<'_>) -> QuickReplyOut<'a> {
    QuickReplyOut {
        actionable_text: &b.title,
        is_default: 0,
        kind: "TEXT_ONLY",
        payload: MessagePayloadOut {
            message: b.payload_or_title(),
            gogo_message: "",
        },
    }
}

fn link<'a>(label: &'a str, url: &'a str) -> ItemOut<'a> {
    ItemOut {
        actionable_text: label,
        location_required: false,
        uri: "LINK",
        is_default: 0,
        kind: "APP_ACTION",
        payload: ItemPayloadOut::Url {
            url,
            gogo_message: "",
        },
    }
}

/// Renders one canonical reply as an HSL body.
pub(crate) fn render<'a>(reply: &'a Reply<'_>) -> HslOut<'a> {
    match reply {
        Reply::Text(t) => HslOut {
            text: t,
            kind: "TEXT",
            data: DataOut::QuickReplies {
                quick_replies: vec![],
            },
        },
        Reply::Question { title, buttons } => HslOut {
            text: title,
            kind: "TEXT",
            data: DataOut::QuickReplies {
                quick_replies: buttons.iter().map(quick_reply).collect(),
            },
        },
        Reply::Button(b) => HslOut {
            text: "",
            kind: "BUTTON",
            data: DataOut::Items {
                items: vec![ItemOut {
                    actionable_text: &b.title,
                    location_required: false,
                    uri: "",
                    is_default: 0,
                    kind: "TEXT_ONLY",
                    payload: ItemPayloadOut::Message(MessagePayloadOut {
                        message: b.payload_or_title(),
                        gogo_message: "",
                    }),
                }],
            },
        },
        Reply::Url { url, text, title } => HslOut {
            text: title.as_deref().unwrap_or(""),
            kind: "BUTTON",
            data: DataOut::Items {
                items: vec![link(
                    text.as_deref().or(title.as_deref()).unwrap_or(url),
                    url,
                )],
            },
        },
        Reply::Media {
            kind: MediaKind::Image,
            url,
        } => HslOut {
            text: "",
            kind: "CAROUSEL",
            data: DataOut::Carousel {
                image_aspect_ratio: "1",
                width: "MEDIUM",
                items: vec![CarouselItemOut {
                    thumbnail: ThumbnailOut { image: url },
                    title: "",
                    sub_title: "",
                    description: "",
                    actionables: [],
                }],
            },
        },
        Reply::Media { kind, url } => HslOut {
            text: "",
            kind: "BUTTON",
            data: DataOut::Items {
                items: vec![link(
                    match kind {
                        MediaKind::Video => "Open video",
                        MediaKind::Audio => "Open audio",
                        _ => "Open file",
                    },
                    url,
                )],
            },
        },
    }
}

#[derive(Deserialize)]
struct HslIn<'a> {
    #[serde(borrow, default)]
    text: Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct QuickDataIn<'a> {
    #[serde(borrow, default)]
    quick_replies: Vec<ActionIn<'a>>,
}

#[derive(Deserialize, Default)]
struct ItemsDataIn<'a> {
    #[serde(borrow, default)]
    items: Vec<ActionIn<'a>>,
}

#[derive(Deserialize, Default)]
struct CarouselDataIn<'a> {
    #[serde(borrow, default)]
    items: Vec<CarouselItemIn<'a>>,
}

#[derive(Deserialize)]
struct CarouselItemIn<'a> {
    #[serde(borrow, default)]
    thumbnail: Option<ThumbnailIn<'a>>,
    #[serde(borrow, default)]
    actionables: Vec<ActionIn<'a>>,
}

#[derive(Deserialize)]
struct ThumbnailIn<'a> {
    #[serde(borrow)]
    image: Cow<'a, str>,
}

/// A quick reply, button item or carousel actionable.
#[derive(Deserialize)]
struct ActionIn<'a> {
    #[serde(borrow)]
    actionable_text: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<ActionPayloadIn<'a>>,
}

#[derive(Deserialize, Default)]
struct ActionPayloadIn<'a> {
    #[serde(borrow, default)]
    url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// An HSL body, for the messages about one that is not ([`Expected`]).
const HSL_BODY: Expected = Expected {
    name: "Haptik",
    shape: "an HSL body",
    opens: b"{",
    keys: &[
        "text",
        "type",
        "data",
        "quick_replies",
        "items",
        "thumbnail",
        "image",
        "actionables",
        "actionable_text",
        "payload",
        "url",
        "message",
    ],
};

fn data<'a, T: Deserialize<'a> + Default>(
    raw: Option<&'a RawValue>,
    at: &str,
) -> Result<T, ProxyError> {
    match raw {
        None => Ok(T::default()),
        Some(r) => serde_json::from_str(r.get()).map_err(|_| {
            HSL_BODY.part(PhantomData::<T>, r.get().as_bytes(), &format!("{at}.data"))
        }),
    }
}

fn button_of(a: ActionIn<'_>) -> Button<'_> {
    let payload = a.payload.and_then(|p| p.message).filter(|m| !m.is_empty());
    Button {
        title: a.actionable_text,
        payload,
    }
}

/// Splits actions into text buttons and links (`payload.url`), keeping each group's order.
fn split_actions<'a>(actions: Vec<ActionIn<'a>>, title: Cow<'a, str>, out: &mut Vec<Reply<'a>>) {
    let mut buttons = Vec::new();
    let mut links = Vec::new();
    for mut a in actions {
        match a.payload.as_mut().and_then(|p| p.url.take()) {
            Some(url) => links.push(Reply::Url {
                url,
                text: Some(a.actionable_text),
                title: (!title.is_empty()).then(|| title.clone()),
            }),
            None => buttons.push(button_of(a)),
        }
    }
    if !buttons.is_empty() {
        out.push(Reply::Question { title, buttons });
    } else if links.is_empty() && !title.is_empty() {
        out.push(Reply::Text(title));
    }
    out.extend(links);
}

/// Parses one HSL body into canonical replies (none when its type has no canonical form). `at` names
/// the body for errors, which name the field at fault, never the bot's text.
pub fn parse<'a>(
    body: &'a RawValue,
    at: &str,
    out: &mut Vec<Reply<'a>>,
) -> Result<bool, ProxyError> {
    let h: HslIn<'a> = serde_json::from_str(body.get())
        .map_err(|_| HSL_BODY.part(PhantomData::<HslIn<'_>>, body.get().as_bytes(), at))?;
    match &*h.kind {
        "TEXT" => {
            let d: QuickDataIn<'a> = data(h.data, at)?;
            if d.quick_replies.is_empty() {
                out.push(Reply::Text(h.text));
            } else {
                out.push(Reply::Question {
                    title: h.text,
                    buttons: d.quick_replies.into_iter().map(button_of).collect(),
                });
            }
        }
        "BUTTON" => {
            let d: ItemsDataIn<'a> = data(h.data, at)?;
            split_actions(d.items, h.text, out);
        }
        "CAROUSEL" => {
            let d: CarouselDataIn<'a> = data(h.data, at)?;
            if !h.text.is_empty() {
                out.push(Reply::Text(h.text));
            }
            for item in d.items {
                if let Some(t) = item.thumbnail {
                    out.push(Reply::Media {
                        kind: MediaKind::Image,
                        url: t.image,
                    });
                }
                split_actions(item.actionables, Cow::Borrowed(""), out);
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn render_json(r: &Reply<'_>) -> Value {
        serde_json::to_value(render(r)).unwrap()
    }

    fn round_trip(r: &Reply<'_>) -> Vec<Reply<'static>> {
        let text = serde_json::to_string(&render(r)).unwrap();
        let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
        let mut out = Vec::new();
        assert!(parse(&raw, "body", &mut out).unwrap());
        out.into_iter().map(into_owned).collect()
    }

    fn into_owned(r: Reply<'_>) -> Reply<'static> {
        let o = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        match r {
            Reply::Text(t) => Reply::Text(o(t)),
            Reply::Question { title, buttons } => Reply::Question {
                title: o(title),
                buttons: buttons
                    .into_iter()
                    .map(|b| Button {
                        title: o(b.title),
                        payload: b.payload.map(o),
                    })
                    .collect(),
            },
            Reply::Button(b) => Reply::Button(Button {
                title: o(b.title),
                payload: b.payload.map(o),
            }),
            Reply::Url { url, text, title } => Reply::Url {
                url: o(url),
                text: text.map(o),
                title: title.map(o),
            },
            Reply::Media { kind, url } => Reply::Media { kind, url: o(url) },
        }
    }

    #[test]
    fn text_is_a_text_with_no_quick_replies() {
        let r = Reply::Text("Hi".into());
        assert_eq!(
            render_json(&r),
            json!({"text":"Hi","type":"TEXT","data":{"quick_replies":[]}})
        );
        assert_eq!(round_trip(&r), [r]);
    }

    #[test]
    fn question_is_a_text_with_quick_replies() {
        let r = Reply::Question {
            title: "Who?".into(),
            buttons: vec![
                Button {
                    title: "Alice".into(),
                    payload: Some("Alice".into()),
                },
                Button {
                    title: "Bob".into(),
                    payload: Some("BOB".into()),
                },
            ],
        };
        assert_eq!(
            render_json(&r),
            json!({"text":"Who?","type":"TEXT","data":{"quick_replies":[
                {"actionable_text":"Alice","is_default":0,"type":"TEXT_ONLY","payload":{"message":"Alice","gogo_message":""}},
                {"actionable_text":"Bob","is_default":0,"type":"TEXT_ONLY","payload":{"message":"BOB","gogo_message":""}}]}})
        );
        assert_eq!(round_trip(&r), [r]);
    }

    #[test]
    fn url_is_a_button_with_a_link() {
        let r = Reply::Url {
            url: "https://e.test".into(),
            text: Some("Example".into()),
            title: Some("T".into()),
        };
        assert_eq!(
            render_json(&r),
            json!({"text":"T","type":"BUTTON","data":{"items":[{"actionable_text":"Example","location_required":false,
                   "uri":"LINK","is_default":0,"type":"APP_ACTION","payload":{"url":"https://e.test","gogo_message":""}}]}})
        );
        assert_eq!(round_trip(&r), [r]);
    }

    #[test]
    fn image_is_a_one_item_carousel() {
        let r = Reply::Media {
            kind: MediaKind::Image,
            url: "https://e.test/i.png".into(),
        };
        assert_eq!(
            render_json(&r),
            json!({"text":"","type":"CAROUSEL","data":{"image_aspect_ratio":"1","width":"MEDIUM","items":[
                {"thumbnail":{"image":"https://e.test/i.png"},"title":"","sub_title":"","description":"","actionables":[]}]}})
        );
        assert_eq!(round_trip(&r), [r]);
    }

    #[test]
    fn other_media_and_lone_buttons_are_buttons() {
        let v = Reply::Media {
            kind: MediaKind::Video,
            url: "https://e.test/v.mp4".into(),
        };
        assert_eq!(
            render_json(&v)["data"]["items"][0]["actionable_text"],
            "Open video"
        );
        // Back from HSL it is a link: the media kind is lost.
        assert_eq!(
            round_trip(&v),
            [Reply::Url {
                url: "https://e.test/v.mp4".into(),
                text: Some("Open video".into()),
                title: None
            }]
        );
        let b = Reply::Button(Button {
            title: "Go".into(),
            payload: Some("GO".into()),
        });
        assert_eq!(render_json(&b)["type"], "BUTTON");
        // A lone button comes back as a one-button question with no title.
        assert_eq!(
            round_trip(&b),
            [Reply::Question {
                title: "".into(),
                buttons: vec![Button {
                    title: "Go".into(),
                    payload: Some("GO".into())
                }]
            }]
        );
    }

    #[test]
    fn carousels_with_actions_and_unknown_types() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"text":"Pick","type":"CAROUSEL","data":{"items":[
                {"thumbnail":{"image":"https://e.test/1.png"},"title":"One","actionables":[
                    {"actionable_text":"Buy","payload":{"url":"https://e.test/buy"}}]},
                {"thumbnail":{"image":"https://e.test/2.png"},"actionables":[]}]}}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(parse(&raw, "m", &mut out).unwrap());
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], Reply::Text("Pick".into()));
        assert_eq!(
            out[1],
            Reply::Media {
                kind: MediaKind::Image,
                url: "https://e.test/1.png".into()
            }
        );
        assert!(matches!(&out[2], Reply::Url { url, .. } if url == "https://e.test/buy"));
        let raw: Box<RawValue> =
            serde_json::from_str(r#"{"text":"x","type":"FORM","data":{}}"#).unwrap();
        assert!(!parse(&raw, "m", &mut Vec::new()).unwrap());
        let raw: Box<RawValue> = serde_json::from_str(r#"{"text":1}"#).unwrap();
        assert_eq!(parse(&raw, "m", &mut Vec::new()).unwrap_err().status, 502);
    }

    #[test]
    fn bad_bodies_name_the_field_never_the_bot() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"text":"","type":"CAROUSEL","data":{"items":[{"thumbnail":{"image":{"SECRET":1}}}]}}"#,
        )
        .unwrap();
        let e = parse(&raw, "message[2].body", &mut Vec::new()).unwrap_err();
        assert_eq!(
            e.message,
            "the backend answer is not a Haptik answer: \
             `message[2].body.data.items[0].thumbnail.image` has the wrong type"
        );
        assert!(e.detail.is_some());
    }
}
