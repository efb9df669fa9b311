//! One user's HTTP sender: messages with `POST …/messages` and `POST …/events`, and the
//! title of a group it administers, one request at a time; a request that fails without an
//! answer (the server died) is made again with the same client id until it is answered.

use serde_json::{Value, json};

use super::record::{ChannelRecord, Outcome, Send, UserIndex};
use super::shared::{Context, Phase, RETRY, is_transient};
use super::world::Role;
use crate::client::Http;
use crate::rng::Rng;

pub async fn run(mut context: Context, user: usize, mut rng: Rng) -> ChannelRecord {
    let name = format!("u{user}h");
    let mut record = ChannelRecord {
        name: name.clone(),
        user: user as UserIndex,
        ..ChannelRecord::default()
    };
    let world = std::sync::Arc::clone(&context.world);
    let token = world.users[user].token.clone();
    let conversations: Vec<_> = world
        .conversations_of(user)
        .into_iter()
        .filter(|(_, role)| *role != Role::Floater)
        .collect();
    let mut http: Option<(usize, Http)> = None;
    while context.phase() == Phase::Run
        && record.sends.len() < context.sends_max
        && !conversations.is_empty()
    {
        // A minority of the sends, as when a client has no socket open.
        let pause = context.pause.as_micros() as u64 * 4;
        tokio::time::sleep(std::time::Duration::from_micros(
            rng.between(pause / 2, pause * 3 / 2),
        ))
        .await;
        let Some(&(conversation, role)) = rng.pick(&conversations) else {
            break;
        };
        let client_msg_id = format!("{name}-{}", record.sends.len());
        let id = &world.conversations[usize::from(conversation)].id;
        let (kind, path, body) = if role == Role::Admin && rng.percent(20) {
            let body = json!({"client_msg_id": client_msg_id, "kind": "title_changed", "title": format!("retitled by {name}")});
            ("title_changed", "events", body)
        } else if rng.percent(50) {
            let body = json!({"client_msg_id": client_msg_id, "body": format!("{client_msg_id} over HTTP")});
            ("message", "messages", body)
        } else {
            let body = json!({"client_msg_id": client_msg_id, "kind": "message", "body": format!("{client_msg_id} over HTTP")});
            ("message", "events", body)
        };
        let path = format!("/api/v1/conversations/{id}/{path}");
        record.sends.push(Send {
            client_msg_id,
            conversation,
            kind,
            attempts: 0,
            outcome: Outcome::Pending,
        });
        let send = record.sends.last_mut().expect("just pushed");
        loop {
            let Some((epoch, connection)) = &mut http else {
                let endpoint = context.endpoint();
                match Http::connect(&endpoint.address).await {
                    Ok(connection) => http = Some((endpoint.epoch, connection)),
                    Err(_) => context.wait_for_restart().await,
                }
                continue;
            };
            send.attempts += 1;
            match connection
                .request("POST", &path, Some(&token), Some(&body))
                .await
            {
                Ok((202, _)) => {
                    send.outcome = Outcome::Accepted;
                    context.recovery.accepted(*epoch);
                    break;
                }
                Ok((status, reply)) if !transient(status, &reply) => {
                    send.outcome = Outcome::Refused {
                        code: code_of(&reply),
                        after_accepted: false,
                    };
                    break;
                }
                // An answer a retry may change: the same request again, a little later.
                Ok(_) => tokio::time::sleep(RETRY).await,
                // No answer (the server died): the same request to the server as it is now.
                Err(_) => http = None,
            }
        }
    }
    let _ = context.drained.try_send(());
    record
}

fn code_of(reply: &Value) -> String {
    reply["error"]["code"]
        .as_str()
        .unwrap_or("unknown")
        .to_string()
}

fn transient(status: u16, reply: &Value) -> bool {
    status >= 500 || is_transient(&code_of(reply))
}
