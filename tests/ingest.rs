//! The webhook endpoint under load and attack, against the real `nightshift serve`: group commit, replays,
//! the memory budget for bodies, timeouts, and a disk that fills up.

mod common;

use std::time::Duration;

use common::{Auth, Spine, ingest_config};
use nightshift::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn address(spine: &Spine) -> String {
    spine.url().trim_start_matches("http://").to_owned()
}

/// Sends `head` (and `body`, ignoring a connection the server closed), then reads the answer until the
/// server closes the connection; returns the status code, or None when nothing came back.
async fn raw(spine: &Spine, head: String, body: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(address(spine)).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(1 << 20) {
        if stream.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

/// A spine whose replay window is on, as by default (the harness turns it off for the other tests), started.
async fn started_with_replay_window() -> Spine {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    let text = std::fs::read_to_string(&spine.config).unwrap();
    std::fs::write(
        &spine.config,
        text.replace("replay_window: 0s", "replay_window: 24h"),
    )
    .unwrap();
    spine.start().await;
    spine
}

fn head(delivery: &str, length: usize, signature: &str) -> String {
    format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         X-GitHub-Event: issues\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {signature}\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

async fn readyz(spine: &Spine) -> (u16, String) {
    let response = reqwest::get(format!("{}/readyz", spine.url()))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Signs and sends `n` unique bodies (`issues/opened.json` with a field `n` added) at once, under the
/// delivery ids `id(n)`; their answers' status codes, in order.
async fn burst(spine: &Spine, ids: &[String]) -> Vec<u16> {
    let body = spine.payload("issues/opened.json");
    nightshift::install_tls_provider();
    // One client (a pool of connections), as GitHub's senders are.
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/github", spine.url());
    let mut sent = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        // Unique bodies, so none is a replay of another.
        let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        value["n"] = n.into();
        value["id"] = id.as_str().into();
        let body = serde_json::to_vec(&value).unwrap();
        let request = client
            .post(&url)
            .header("X-GitHub-Event", "issues")
            .header("X-GitHub-Delivery", id)
            .header("X-Hub-Signature-256", common::sign(common::SECRET, &body))
            .body(body);
        sent.push(tokio::spawn(async move {
            request.send().await.unwrap().status().as_u16()
        }));
    }
    let mut codes = Vec::new();
    for status in sent {
        codes.push(status.await.unwrap());
    }
    codes
}

async fn a_burst_is_all_acknowledged_and_all_stored(postgres: bool) {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    let db = spine.use_store(postgres).await;
    spine.start().await;
    let ids: Vec<String> = (0..200).map(|n| format!("burst-{n}")).collect();
    assert!(burst(&spine, &ids).await.iter().all(|&code| code == 202));
    assert_eq!(db.store.delivery_count().await.unwrap(), 200);
    let log = spine.server.as_ref().unwrap().log();
    assert_eq!(log.matches("delivery stored").count(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_concurrent_deliveries_is_all_acknowledged_and_all_stored() {
    a_burst_is_all_acknowledged_and_all_stored(false).await;
}

/// Group commit on Postgres: every request answered after its batch committed, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_concurrent_deliveries_is_all_acknowledged_and_all_stored_on_postgres() {
    a_burst_is_all_acknowledged_and_all_stored(true).await;
}

/// A Postgres commit that fails (here a constraint the test adds refuses some deliveries: a stand-in for a
/// full disk or a server going away) answers 503 to every request of its batch, never 202; `/readyz` says
/// the store fails until a later batch commits. A batch that commits answers 202 only for its own
/// deliveries: every 202 is a stored row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_postgres_commit_answers_503_never_2xx_without_the_row_and_recovers() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    let db = spine.use_store(true).await;
    spine.start().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "ALTER TABLE deliveries ADD CONSTRAINT refuse_for_test CHECK (delivery_id NOT LIKE 'refused-%') NOT VALID",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(burst(&spine, &["refused-alone".into()]).await, [503]);
    let (status, why) = readyz(&spine).await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("storing deliveries failed"), "{why}");
    let log = spine.server.as_ref().unwrap().log();
    assert!(log.contains("storing deliveries failed"), "{log}");

    // Refused and accepted deliveries at once, in batches that fail and batches that commit.
    let ids: Vec<String> = (0..120)
        .map(|n| {
            if n % 10 == 3 {
                format!("refused-{n}")
            } else {
                format!("kept-{n}")
            }
        })
        .collect();
    let codes = burst(&spine, &ids).await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT delivery_id FROM deliveries")
        .fetch_all(&pool)
        .await
        .unwrap();
    for (id, code) in ids.iter().zip(&codes) {
        match code {
            202 => assert!(
                stored.contains(id),
                "{id} was acknowledged and is not stored"
            ),
            // Its batch rolled back whole.
            503 => assert!(!stored.contains(id), "{id} was refused and is stored"),
            other => panic!("{id}: unexpected {other}"),
        }
        if id.starts_with("refused-") {
            assert_eq!(*code, 503, "{id} cannot be stored");
        }
    }

    // The constraint goes: ingest recovers, and so does /readyz.
    sqlx::query("ALTER TABLE deliveries DROP CONSTRAINT refuse_for_test")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(burst(&spine, &["after".into()]).await, [202]);
    assert_eq!(readyz(&spine).await.0, 200);
}

/// On Postgres, batches are written side by side: a batch held up in the server (here its row waits for
/// another transaction's uncommitted row with the same delivery id) does not hold up the deliveries that
/// come after it, and is answered, stored, once it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_batch_held_up_in_the_server_does_not_hold_up_the_next() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    let db = spine.use_store(true).await;
    spine.start().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO deliveries (delivery_id, event, payload, received_at) VALUES ('held', 'issues', '', 0)",
    )
    .execute(&mut *holder)
    .await
    .unwrap();
    let held = {
        let spine_url = spine.url();
        let body = spine.payload("issues/opened.json");
        tokio::spawn(async move {
            nightshift::install_tls_provider();
            reqwest::Client::new()
                .post(format!("{spine_url}/webhooks/github"))
                .header("X-GitHub-Event", "issues")
                .header("X-GitHub-Delivery", "held")
                .header("X-Hub-Signature-256", common::sign(common::SECRET, &body))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // The service's insert waits for the holder's row: seen as a lock wait in the server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO deliveries%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held delivery's insert never waited"
        );
        tokio::task::yield_now().await;
    }
    // Later deliveries are stored and acknowledged while it waits.
    let ids: Vec<String> = (0..20).map(|n| format!("after-{n}")).collect();
    let codes = tokio::time::timeout(Duration::from_secs(60), burst(&spine, &ids))
        .await
        .expect("the deliveries after a held-up batch waited for it");
    assert!(codes.iter().all(|&code| code == 202), "{codes:?}");
    assert!(!held.is_finished(), "the held delivery was answered early");
    // The holder gives up its row: the held delivery is stored, and acknowledged.
    holder.rollback().await.unwrap();
    assert_eq!(held.await.unwrap(), 202);
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT delivery_id FROM deliveries WHERE delivery_id = 'held'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored, ["held"]);
    assert_eq!(db.store.delivery_count().await.unwrap(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_body_replayed_under_a_new_delivery_id_is_stored_once() {
    let mut spine = started_with_replay_window().await;
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "first", &body).await, 202);
    // GitHub's own redelivery repeats the id: already received.
    assert_eq!(spine.deliver("issues", "first", &body).await, 200);
    // An attacker who captured the signed body sends it under new ids.
    for n in 0..3 {
        assert_eq!(
            spine.deliver("issues", &format!("replay-{n}"), &body).await,
            200
        );
    }
    assert_eq!(spine.store().await.delivery_count().await.unwrap(), 1);
    let log = spine.server.as_ref().unwrap().log();
    assert!(log.contains("a replay, not stored again"), "{log}");
}

/// A large signed body (its digest and packing worked out off the runtime's threads) is stored byte for
/// byte, and the same body under a new delivery id is still caught as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_signed_body_is_stored_byte_for_byte_and_its_replay_caught() {
    let mut spine = started_with_replay_window().await;
    let mut value: serde_json::Value =
        serde_json::from_slice(&spine.payload("issues/opened.json")).unwrap();
    value["padding"] = serde_json::Value::String(
        (0..3_000_000u32)
            .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
            .collect(),
    );
    let body = serde_json::to_vec(&value).unwrap();
    assert_eq!(spine.deliver("issues", "big", &body).await, 202);
    assert_eq!(spine.deliver("issues", "big-again", &body).await, 200);
    let store = spine.store().await;
    assert_eq!(store.delivery_count().await.unwrap(), 1);
    assert!(
        store.delivery_payload(1).await.unwrap() == body,
        "the stored body differs from the one signed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_over_budget_bodies_are_refused_before_they_are_read() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    ingest_config(&spine, "  body_budget: 1M\n  body_timeout: 2s\n");
    spine.start().await;
    // Headers only: a server that read the body would wait for it and never answer.
    assert_eq!(
        raw(&spine, head("big", 25 * 1024 * 1024 + 1, "sha256=00"), b"").await,
        Some(413)
    );
    assert_eq!(
        raw(&spine, head("budget", 2 << 20, "sha256=00"), b"").await,
        Some(503)
    );
    // A body that says it is small and sends more is cut at what it said (the rest is no body of it); one
    // without a length (chunked) is counted as it streams and refused past the budget.
    let chunk = vec![b'x'; 256 * 1024];
    let mut chunked = String::new();
    for _ in 0..8 {
        chunked.push_str(&format!("{:x}\r\n", chunk.len()));
        chunked.push_str(std::str::from_utf8(&chunk).unwrap());
        chunked.push_str("\r\n");
    }
    chunked.push_str("0\r\n\r\n");
    let head_chunked = head("chunked", 0, "sha256=00")
        .replace("Content-Length: 0\r\n", "Transfer-Encoding: chunked\r\n");
    assert_eq!(
        raw(&spine, head_chunked, chunked.as_bytes()).await,
        Some(503)
    );
    // A body that trickles is cut off.
    let mut stream = TcpStream::connect(address(&spine)).await.unwrap();
    stream
        .write_all(head("slow", 100, "sha256=00").as_bytes())
        .await
        .unwrap();
    stream.write_all(b"{").await.unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Still serving.
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "after", &body).await, 202);
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_large_unsigned_bodies_at_once_stay_within_the_budget() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    spine.start().await;
    let pid = spine.server.as_ref().unwrap().pid();
    let body = std::sync::Arc::new(vec![b'x'; 25 * 1024 * 1024]);
    let spine = std::sync::Arc::new(spine);
    let mut sent = Vec::new();
    for n in 0..150 {
        let spine = spine.clone();
        let body = body.clone();
        sent.push(tokio::spawn(async move {
            raw(
                &spine,
                head(&format!("big-{n}"), body.len(), "sha256=00"),
                &body,
            )
            .await
        }));
    }
    let mut refused = 0;
    for answer in sent {
        match answer.await.unwrap() {
            Some(503) => refused += 1,
            Some(401) | None => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // 64 MiB of budget holds two 25 MB bodies at once: most were refused unread.
    assert!(refused >= 100, "only {refused} refused");
    let peak = peak_rss(pid);
    assert!(
        peak < 200 << 20,
        "peak RSS {} MiB with 150 bodies of 25 MB",
        peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    ingest_config(&spine, "  header_timeout: 1s\n");
    spine.start().await;
    let mut stream = TcpStream::connect(address(&spine)).await.unwrap();
    stream
        .write_all(b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // Returns when the server closes the connection (the test's own timeout is the only bound).
    let closed = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow connection is still open");
    // An idle kept-alive connection is closed the same way, and the service still answers.
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "after", &body).await, 202);
}

/// Reads what the server answers on `stream` until it closes the connection; the status code.
async fn answer_of(mut stream: TcpStream) -> Option<u16> {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_never_send_their_body_give_their_connections_back_and_webhooks_get_through()
{
    let mut spine = Spine::new(Auth::Token, &[]).await;
    ingest_config(&spine, "  max_connections: 3\n  body_timeout: 1s\n");
    spine.start().await;
    // Every connection the service serves at once, taken by forms (the dashboard's sign-out, a job's
    // cancel, a path that is nothing) whose headers came and whose bodies never will.
    let mut stalled = Vec::new();
    for path in ["/auth/logout", "/jobs/1/cancel", "/nothing-here"] {
        let mut stream = TcpStream::connect(address(&spine)).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 1000\r\n\r\ncsrf="
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stalled.push(tokio::spawn(answer_of(stream)));
    }
    // A webhook waits for a connection slot, and gets one once the body timeout frees them; before, it waited
    // for as long as the stalled clients kept their connections open.
    let body = spine.payload("issues/opened.json");
    let delivered = tokio::time::timeout(
        Duration::from_secs(30),
        spine.deliver("issues", "behind-stalled", &body),
    )
    .await
    .expect("the webhook never got a connection: stalled bodies hold every slot");
    assert_eq!(delivered, 202);
    for answer in stalled {
        assert_eq!(answer.await.unwrap(), Some(408));
    }
    // A form larger than any the service takes is refused unread.
    let big = format!(
        "POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n",
        1 << 20
    );
    assert_eq!(raw(&spine, big, b"").await, Some(413));
    // A small form still reaches its handler: signing out without a session's CSRF token is refused by it.
    let form = "POST /auth/logout HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                Content-Length: 6\r\nConnection: close\r\n\r\ncsrf=x"
        .to_owned();
    let status = raw(&spine, form, b"").await.unwrap();
    assert!(status != 408 && status != 413, "{status}");
}

/// Bodies are counted against the memory budget as their bytes arrive, not as their headers announce
/// them: three connections that said 25 MB and sent nothing held the whole 64 MiB budget for the body
/// timeout, and every real delivery meanwhile was answered 503 unread (and again, for as long as the
/// attacker kept sending such headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_announcing_large_bodies_that_never_come_hold_no_budget() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    ingest_config(&spine, "  body_budget: 1M\n");
    spine.start().await;
    // Headers that announce nearly the whole budget, and no body; `Expect: 100-continue` makes the server
    // say when the handler starts reading the body (after the budget was looked at).
    let mut held = TcpStream::connect(address(&spine)).await.unwrap();
    let announce = head("hold", (1 << 20) - 512, "sha256=00").replacen(
        "\r\n\r\n",
        "\r\nExpect: 100-continue\r\n\r\n",
        1,
    );
    held.write_all(announce.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("100 Continue") {
        let mut buf = [0u8; 256];
        let n = held.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let body = spine.payload("issues/opened.json");
    assert_eq!(spine.deliver("issues", "real", &body).await, 202);
    drop(held);
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_never_2xx_without_the_row_and_recovers() {
    let mut spine = Spine::new(Auth::Token, &[]).await;
    // The store on a small filesystem of its own (a tmpfs: the tests run as root).
    let state = spine.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root (CAP_SYS_ADMIN)"
    );
    let _mount = Mount(state.clone());
    spine.start().await;
    let body = spine.payload("issues/opened.json");
    let unique = |n: usize| {
        let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        value["n"] = n.into();
        serde_json::to_vec(&value).unwrap()
    };
    assert_eq!(spine.deliver("issues", "before", &unique(0)).await, 202);
    // Fill the disk.
    let ballast = state.join("ballast");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", ballast.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let mut acknowledged = vec!["before".to_owned()];
    let mut refused = 0;
    for n in 1..40 {
        let id = format!("full-{n}");
        match spine.deliver("issues", &id, &unique(n)).await.as_u16() {
            202 => acknowledged.push(id),
            503 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "nothing was refused on a full disk");
    let (status, why) = readyz(&spine).await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("full"), "{why}");
    let log = spine.server.as_ref().unwrap().log();
    assert!(log.contains("storing deliveries failed"), "{log}");
    // Space comes back: ingest recovers, and so does /readyz.
    std::fs::remove_file(&ballast).unwrap();
    assert_eq!(spine.deliver("issues", "after", &unique(99)).await, 202);
    acknowledged.push("after".into());
    assert_eq!(readyz(&spine).await.0, 200);
    // Every acknowledged delivery is in the store.
    let url = format!("sqlite://{}/nightshift.db", state.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT delivery_id FROM deliveries")
        .fetch_all(&pool)
        .await
        .unwrap();
    for id in &acknowledged {
        assert!(
            stored.contains(id),
            "{id} was acknowledged and is not stored"
        );
    }
}
