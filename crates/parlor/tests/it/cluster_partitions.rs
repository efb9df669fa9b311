//! The inbound and notification queues' partitions shared by the persisters (8, the
//! default): each partition's holder stores it and delivers its notifications; persisters that join, stop cleanly or are killed in the middle of a burst take their share
//! and hand it over without losing, duplicating or reordering a message, and a killed
//! persister's partitions are taken over within the bound its leases set.

use std::time::Duration;

use parlor_core::ids::ConversationId;
use parlor_core::partitions::partition_of;
use tokio::time::Instant;

use crate::cluster::{Cluster, shared_postgres};
use crate::cluster_chaos::{assert_stored_exactly_once, burst_through_chaos, senders_to};
use crate::cluster_takeover::counter;
use crate::harness::{Http, Ws};

const PARTITIONS: u64 = 8;

fn nats() -> String {
    std::env::var("PARLOR_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4223".into())
}

/// Waits until the live persisters (`live`) hold every partition between them, each its
/// share: `PARTITIONS / live` or one more.
async fn wait_for_balance(cluster: &Cluster, live: &[usize], partitions: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut held = Vec::new();
        for index in live {
            held.push(
                counter(
                    &cluster.persisters[*index],
                    "parlor_inbound_partitions_held",
                )
                .await,
            );
        }
        let share = partitions / live.len() as u64;
        if held.iter().sum::<u64>() == partitions
            && held.iter().all(|h| *h == share || *h == share + 1)
        {
            return;
        }
        assert!(Instant::now() < deadline, "partitions held: {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisters_that_join_stop_and_die_mid_burst_share_the_partitions_and_lose_nothing() {
    let mut cluster = Cluster::start_sized(&nats(), &shared_postgres(), 2, 1).await;
    wait_for_balance(&cluster, &[0, 1], PARTITIONS).await;
    let http = cluster.http();
    let (alice_id, alice) = http.register("alice").await;
    // Six conversations land in several partitions.
    let names = ["bob", "carol", "dave", "erin", "frank", "grace"];
    let conversations = senders_to(&http, &alice_id, &names).await;
    let address = cluster.address.clone();
    let bursts = futures::future::join_all(conversations.iter().map(|(conversation, sender)| {
        burst_through_chaos(&address, sender, conversation, 2, 3000, 0, || {})
    }));
    let chaos = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let joined = cluster.add_persister();
        eprintln!("a third persister joined");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stopped_stored = counter(&cluster.persisters[0], "parlor_messages_stored_total").await;
        assert!(cluster.persisters[0].terminate().success());
        eprintln!("the first persister stopped cleanly, having stored {stopped_stored}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut stored = stopped_stored;
        for index in [1, joined] {
            stored += counter(&cluster.persisters[index], "parlor_messages_stored_total").await;
        }
        cluster.persisters[1].kill();
        eprintln!("the second persister was killed; {stored} of 36,000 were stored by then");
        (joined, stored)
    };
    let (accepted, (joined, stored_at_kill)) = tokio::join!(bursts, chaos);
    assert!(
        stored_at_kill < 36_000,
        "everything was stored before the kill: make the bursts longer"
    );
    for ((conversation, _), accepted) in conversations.iter().zip(&accepted) {
        assert_eq!(accepted.len(), 6000);
        assert_stored_exactly_once(&http, &alice, conversation, accepted).await;
    }
    let survivor = &cluster.persisters[joined];
    assert!(counter(survivor, "parlor_messages_stored_total").await > 0);
    // Duplicates it may have met (what the killed one stored and had not acknowledged) were
    // answered as such: the histories above hold every message once.
    wait_for_balance(&cluster, &[joined], PARTITIONS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_persisters_partitions_are_taken_over_within_8_seconds() {
    let mut cluster = Cluster::start_sized(&nats(), &shared_postgres(), 2, 1).await;
    wait_for_balance(&cluster, &[0, 1], PARTITIONS).await;
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    // A conversation stored by the first persister: one message at a time, until its stored
    // counter moves.
    let mut ws = Ws::connect(&cluster.address, &alice).await;
    let mut stored_before = 0;
    let mut chosen = None;
    for round in 0..40 {
        let (other_id, _) = http.register(&format!("user{round}")).await;
        let conversation = http.direct(&alice, &other_id).await;
        ws.send_message(&conversation, &format!("m{round}"), "hello")
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while http.history(&alice, &conversation).await.is_empty() {
            assert!(Instant::now() < deadline, "never stored");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stored = counter(&cluster.persisters[0], "parlor_messages_stored_total").await;
        if stored > stored_before {
            chosen = Some(conversation);
            break;
        }
        stored_before = stored;
    }
    let conversation = chosen.expect("the first persister stores one of 40 conversations");

    cluster.persisters[0].kill();
    let killed_at = Instant::now();
    ws.send_message(&conversation, "after", "after the kill")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.history(&alice, &conversation).await.len() < 2 {
        assert!(Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed_at.elapsed();
    eprintln!("stored by the survivor {took:?} after the kill");
    // 5 s for the leases, pins and membership to lapse, then one membership poll (0.5 s)
    // and one standby poll (0.2 s); more on a busy machine.
    assert!(took < Duration::from_secs(8), "{took:?}");
    // And delivered: the killed one delivered that partition's notifications too, and the
    // survivor does now.
    loop {
        let frame = ws.next_of("message").await;
        if frame["message"]["client_msg_id"] == "after" {
            break;
        }
    }
    let took = killed_at.elapsed();
    eprintln!("delivered by the survivor {took:?} after the kill");
    assert!(took < Duration::from_secs(8), "{took:?}");
    wait_for_balance(&cluster, &[1], PARTITIONS).await;
}

/// The holder of a partition delivers its notifications too, so that delivering is shared
/// as storing is: with conversations in 5 of the 8 partitions (each persister holds 4), both
/// persisters store, and each delivers at least what it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_persister_delivers_the_notifications_of_the_partitions_it_stores() {
    let cluster = Cluster::start_sized(&nats(), &shared_postgres(), 2, 1).await;
    wait_for_balance(&cluster, &[0, 1], PARTITIONS).await;
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    let mut ws = Ws::connect(&cluster.address, &alice).await;
    let mut partitions = std::collections::BTreeSet::new();
    for round in 0..200 {
        if partitions.len() == 5 {
            break;
        }
        let (other_id, _) = http.register(&format!("user{round}")).await;
        let conversation = http.direct(&alice, &other_id).await;
        let id = ConversationId(conversation.parse().expect("a conversation id"));
        if partitions.insert(partition_of(id, PARTITIONS as u32)) {
            ws.send_message(&conversation, &format!("m{round}"), "hello")
                .await;
        }
    }
    assert_eq!(partitions.len(), 5, "200 conversations in fewer partitions");
    for _ in 0..5 {
        ws.next_of("message").await;
    }
    for (index, persister) in cluster.persisters.iter().enumerate() {
        let stored = counter(persister, "parlor_messages_stored_total").await;
        let delivered = counter(persister, "parlor_messages_delivered_total").await;
        eprintln!("persister {index}: stored {stored}, delivered {delivered}");
        assert!(
            stored > 0 && delivered >= stored,
            "persister {index} stored {stored} and delivered {delivered}"
        );
    }
}

/// The partitions are fixed when the cluster is created: a process given another count
/// refuses to start and says what the cluster has; given the same count, or none, it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_given_another_partition_count_refuses_to_start() {
    let cluster = Cluster::start_sized(&nats(), &shared_postgres(), 1, 1).await;
    for role in ["gateway", "persister"] {
        let refused = cluster.run_to_exit(role, &["--partitions", "4"]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{role} started: {stderr}");
        assert!(
            stderr.contains("the inbound queue has 8 partitions")
                && stderr.contains("--partitions 4"),
            "{role}: {stderr}"
        );
    }
    let http = cluster.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, _) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut ws = Ws::connect(&cluster.address, &alice).await;
    ws.send_message(&conversation, "m1", "still here").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.history(&alice, &conversation).await.is_empty() {
        assert!(Instant::now() < deadline, "the cluster stopped storing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Changing the partitions is an operation of its own (`parlor partitions --set`), made only
/// while nothing can be in between: refused while a persister or gateway runs, or while an
/// accepted message waits in a partition; once everything is stored and every process
/// stopped, the cluster starts again with the new count, and every message, from before and
/// after, is stored once and in each sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partitions_change_only_with_every_process_stopped_and_every_message_stored() {
    let mut cluster = Cluster::start_sized(&nats(), &shared_postgres(), 1, 1).await;
    let http = cluster.http();
    let (alice_id, alice) = http.register("alice").await;
    let chats = senders_to(&http, &alice_id, &["bob", "carol", "dave"]).await;
    let mut accepted = Vec::new();
    for (chat, sender) in &chats {
        accepted.push(burst_through_chaos(&cluster.address, sender, chat, 1, 100, 0, || {}).await);
    }
    let change = |cluster: &Cluster| {
        let output = cluster.run_command(&["partitions", "--set", "4"]);
        let said = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        (output.status.success(), said)
    };
    let (changed, said) = change(&cluster);
    assert!(
        !changed && said.contains("persister(s) still run"),
        "{said}"
    );

    // Accepted while no persister runs: they wait in their partitions.
    assert!(cluster.persisters[0].terminate().success());
    let mut ws = Ws::connect(&cluster.address, &chats[0].1).await;
    for i in 0..5 {
        let id = format!("s1-{i}");
        ws.send_message(&chats[0].0, &id, "while stopped").await;
        accepted[0].insert(id);
    }
    for _ in 0..5 {
        ws.next_of("accepted").await;
    }
    let (changed, said) = change(&cluster);
    assert!(!changed && said.contains("gateway(s) still run"), "{said}");
    drop(ws);
    for gateway in &mut cluster.gateways {
        assert!(gateway.terminate().success());
    }
    let (changed, said) = change(&cluster);
    assert!(
        !changed && said.contains("holds entries not yet stored"),
        "{said}"
    );

    // A persister stores (and announces) them; then it stops too.
    let storing = cluster.add_persister();
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(&cluster.persisters[storing], "parlor_messages_stored_total").await < 5 {
        assert!(
            Instant::now() < deadline,
            "the waiting messages were never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.persisters[storing].terminate().success());
    let (changed, said) = change(&cluster);
    assert!(
        changed && said.contains("have 4 partitions (they had 8)"),
        "{said}"
    );
    let shown = cluster.run_command(&["partitions"]);
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), "4");

    // The cluster again, on the recorded count: a process given the old one refuses.
    let refused = cluster.run_to_exit("persister", &["--partitions", "8"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the inbound queue has 4 partitions")
    );
    let gateway = cluster.add_gateway();
    let persister = cluster.add_persister();
    let direct = Http {
        address: cluster.gateways[gateway].address.clone(),
    };
    for ((chat, sender), accepted) in chats.iter().zip(&mut accepted) {
        let mut ws = Ws::connect(&direct.address, sender).await;
        for i in 0..20 {
            let id = format!("s2-{i}");
            ws.send_message(chat, &id, "after").await;
            accepted.insert(id);
        }
        for _ in 0..20 {
            ws.next_of("accepted").await;
        }
    }
    for ((chat, _), accepted) in chats.iter().zip(&accepted) {
        assert_stored_exactly_once(&direct, &alice, chat, accepted).await;
    }
    wait_for_balance(&cluster, &[persister], 4).await;
}
