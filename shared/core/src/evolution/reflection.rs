//! Reflective mutation: the reflection model reads a component (the instructions, or the
//! capability descriptions) and a minibatch as *input / output / feedback* records, and writes
//! an improved version, fenced. Cheap checks run before any budget is spent on the child.

use std::collections::HashSet;

use crate::llm::ChatMessage;
use crate::session::Role;

/// Words in a run that counts as copied from a training input.
const LEAK_RUN: usize = 8;
/// Longest input, output or feedback shown to the reflection model per record.
const MAX_FIELD: usize = 2_000;

/// One minibatch case as the reflection model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub input: String,
    pub output: String,
    pub feedback: String,
    pub score: f64,
}

/// The reflection prompt for `component` (its current text) and the records.
pub fn prompt(component: &str, current: &str, records: &[Record]) -> Vec<ChatMessage> {
    let system = format!(
        "You improve the {component} of an AI assistant from evidence. You are given the \
         current text and examples of inputs it received, what it answered, and feedback on \
         each answer. Write an improved text, addressed to the assistant, that: states the task \
         and the expected input precisely; states the exact output format the feedback asks \
         for; carries the domain facts and rules the feedback reveals; keeps what already \
         worked; and generalises, so it serves inputs like these without quoting them. Keep any \
         text between <keep> and </keep> unchanged. Reply with one sentence on what you changed \
         and why, then the complete new text between {OPEN} and {CLOSE}, and nothing after it."
    );
    let mut user = format!("Current {component}:\n<current>\n{current}\n</current>\n\nExamples:\n");
    for (i, r) in records.iter().enumerate() {
        user.push_str(&format!(
            "\n### Example {}\nInput:\n{}\n\nAnswer:\n{}\n\nFeedback (score {:.2}): {}\n",
            i + 1,
            cut(&r.input),
            cut(&r.output),
            r.score,
            cut(&r.feedback)
        ));
    }
    user.push_str(&format!(
        "\nWrite the improved {component} between {OPEN} and {CLOSE}."
    ));
    vec![
        ChatMessage::new(Role::System, system),
        ChatMessage::new(Role::User, user),
    ]
}

/// The tags the new text comes between: unambiguous where answers are code or JSON, which a
/// small model may fence too.
const OPEN: &str = "<new_text>";
const CLOSE: &str = "</new_text>";

fn cut(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_FIELD).collect();
    if text.chars().count() > MAX_FIELD {
        out.push_str(" […]");
    }
    out
}

/// The new text and the rationale of a reply. The text is what the last `<new_text>` tag
/// holds (to `</new_text>` or the end of a reply cut off by the token limit); without the tags,
/// the last fenced block that differs from `current` (small models often quote the current
/// text first); without either, the whole reply. The rationale is what precedes the text.
pub fn parse(reply: &str, current: &str) -> Option<(String, String)> {
    if let Some(open) = reply.rfind(OPEN) {
        let body = &reply[open + OPEN.len()..];
        let text = body.split(CLOSE).next().unwrap_or_default().trim();
        // A fence inside the tags is decoration.
        let text = text
            .strip_prefix("```")
            .map(|t| t.split_once('\n').map_or("", |(_, rest)| rest))
            .map(|t| t.trim_end().strip_suffix("```").unwrap_or(t).trim())
            .unwrap_or(text);
        if text.is_empty() || text == current.trim() {
            return None;
        }
        return Some((text.to_owned(), rationale_of(&reply[..open])));
    }
    let mut blocks = Vec::new();
    let mut rest = 0;
    while let Some(open) = reply[rest..].find("```").map(|i| rest + i) {
        let after = open + 3;
        // The fence may name a language (```text).
        let body = reply[after..]
            .find('\n')
            .map_or(reply.len(), |n| after + n + 1);
        let (text, next) = match reply[body..].find("```") {
            Some(close) => (&reply[body..body + close], body + close + 3),
            None => (&reply[body..], reply.len()),
        };
        blocks.push((open, text.trim()));
        rest = next;
        if rest >= reply.len() {
            break;
        }
    }
    let (open, text) = match blocks
        .iter()
        .rev()
        .find(|(_, t)| !t.is_empty() && t.trim() != current.trim())
    {
        Some((open, text)) => (*open, (*text).to_owned()),
        None if blocks.is_empty() => (0, reply.trim().to_owned()),
        None => return None,
    };
    if text.is_empty() {
        return None;
    }
    Some((text, rationale_of(&reply[..open])))
}

fn rationale_of(before: &str) -> String {
    let rationale = before.split_whitespace().collect::<Vec<_>>().join(" ");
    if rationale.is_empty() {
        "rewritten from the minibatch's feedback".to_owned()
    } else {
        rationale.chars().take(500).collect()
    }
}

/// A child may always grow to this many characters: a one-line seed must be able to become a
/// few paragraphs of instructions.
const MIN_LENGTH_LIMIT: usize = 2_000;

/// The longest text [`screen`] accepts for a child of `parent`, in characters.
pub fn length_limit(parent: &str) -> usize {
    (2 * parent.chars().count()).max(MIN_LENGTH_LIMIT)
}

/// Tokens a reflection may write: room for the longest child [`screen`] accepts (about three
/// characters a token, to be safe) and a sentence of rationale. Bounds a slow model's time.
pub fn max_tokens(parent: &str) -> u32 {
    u32::try_from(length_limit(parent) / 3 + 200)
        .unwrap_or(u32::MAX)
        .min(8_192)
}

/// Refuses a child before it costs anything: empty or unchanged, more than twice the parent's
/// length (or 2,000 characters, whichever is more: a one-line seed must be able to grow), an
/// eight-word run copied from a training input (user data must not leak into prompts), or a
/// `<keep>` section of the parent lost.
///
/// # Errors
/// Why the child is refused.
pub fn screen(parent: &str, child: &str, training_inputs: &[&str]) -> Result<(), String> {
    if child.trim().is_empty() {
        return Err("the reflection wrote nothing".into());
    }
    if child.trim() == parent.trim() {
        return Err("the reflection changed nothing".into());
    }
    let limit = length_limit(parent);
    let length = child.chars().count();
    if length > limit {
        return Err(format!(
            "{length} characters, over the limit of {limit} (twice the parent's)"
        ));
    }
    let known: HashSet<Vec<String>> = runs(parent).into_iter().collect();
    let training: HashSet<Vec<String>> = training_inputs
        .iter()
        .flat_map(|input| runs(input))
        .collect();
    if let Some(copied) = runs(child)
        .into_iter()
        .find(|run| !known.contains(run) && training.contains(run))
    {
        return Err(format!(
            "copies words from a training input: \"{}\"",
            copied.join(" ")
        ));
    }
    for section in kept_sections(parent) {
        if !child.contains(section) {
            return Err(format!(
                "drops a <keep> section: \"{}\"",
                section.chars().take(80).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// Every run of [`LEAK_RUN`] consecutive words, lowercased.
fn runs(text: &str) -> Vec<Vec<String>> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.windows(LEAK_RUN).map(<[String]>::to_vec).collect()
}

/// The texts between `<keep>` and `</keep>`.
fn kept_sections(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<keep>") {
        let after = &rest[start + "<keep>".len()..];
        let Some(end) = after.find("</keep>") else {
            break;
        };
        out.push(&after[..end]);
        rest = &after[end + "</keep>".len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fenced_text_and_the_rationale_come_back() {
        let reply = "I named the labels and the output format.\n```text\nClassify the ticket as one of: billing, technical.\nAnswer with the label only.\n```";
        let (text, why) = parse(reply, "Classify.").unwrap();
        assert_eq!(
            text,
            "Classify the ticket as one of: billing, technical.\nAnswer with the label only."
        );
        assert_eq!(why, "I named the labels and the output format.");
        assert!(parse("```\n```", "Classify.").is_none());
        assert!(
            parse("```\nClassify.\n```", "Classify.").is_none(),
            "the same text"
        );
    }

    #[test]
    fn the_tagged_text_wins_over_fenced_examples() {
        let reply = "Added the JSON rule.\n<new_text>\nReply with only a JSON object with the keys name and age, no code fence.\nExample: ```json\n{\"name\": \"A\"}\n```\n</new_text>";
        let (text, why) = parse(reply, "Extract.").unwrap();
        assert!(text.starts_with("Reply with only a JSON object"), "{text}");
        assert!(
            text.ends_with("```"),
            "a fence inside the text stays: {text}"
        );
        assert_eq!(why, "Added the JSON rule.");
        let fenced = "Done.\n<new_text>\n```\nAnswer tersely.\n```\n</new_text>";
        assert_eq!(parse(fenced, "Extract.").unwrap().0, "Answer tersely.");
        assert!(parse("<new_text>Extract.</new_text>", "Extract.").is_none());
    }

    #[test]
    fn quoted_current_text_cut_off_blocks_and_bare_replies_are_read() {
        let quoted = "You wrote:\n```\nClassify.\n```\nBetter:\n```\nClassify as billing or technical.\n```\nDone.";
        let (text, why) = parse(quoted, "Classify.").unwrap();
        assert_eq!(text, "Classify as billing or technical.");
        assert_eq!(why, "You wrote: ``` Classify. ``` Better:");
        let cut = "Here it is.\n```\nAnswer with one label: billing, technical";
        assert_eq!(
            parse(cut, "Classify.").unwrap().0,
            "Answer with one label: billing, technical"
        );
        let bare = "Answer with one label: billing or technical.";
        assert_eq!(parse(bare, "Classify.").unwrap().0, bare);
    }

    #[test]
    fn cheap_checks_refuse_leaks_bloat_and_lost_sections() {
        let training = ["my order number 5541 arrived broken and the box was wet when delivered"];
        assert!(screen("Help.", "Help customers with orders.", &training).is_ok());
        let leak = screen(
            "Help.",
            "Help. For example: order number 5541 arrived broken and the box was wet.",
            &training,
        )
        .unwrap_err();
        assert!(
            leak.starts_with("copies words from a training input"),
            "{leak}"
        );
        let long = "x".repeat(3_000);
        assert!(
            screen(&"y".repeat(1_400), &long, &[])
                .unwrap_err()
                .contains("over the limit")
        );
        assert!(
            screen("a", &"b".repeat(1_900), &[]).is_ok(),
            "a short seed may grow to 2,000"
        );
        let lost = screen(
            "Be kind. <keep>Never share card numbers.</keep>",
            "Be kind.",
            &[],
        )
        .unwrap_err();
        assert!(lost.starts_with("drops a <keep> section"), "{lost}");
        assert!(screen("Same", " Same ", &[]).is_err());
    }

    #[test]
    fn the_prompt_shows_every_record() {
        let messages = prompt(
            "instructions",
            "Classify.",
            &[Record {
                input: "card charged twice".into(),
                output: "It is billing.".into(),
                feedback: "expected exactly `billing`".into(),
                score: 0.0,
            }],
        );
        assert_eq!(messages.len(), 2);
        assert!(messages[1].content.contains("card charged twice"));
        assert!(messages[1].content.contains("expected exactly `billing`"));
        assert!(messages[1].content.contains("Classify."));
    }
}
