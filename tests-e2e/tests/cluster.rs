//! The stack on a real three-master Redis Cluster (`redis-server --cluster-enabled yes` ×3 and
//! `redis-cli --cluster create`): every key is hash-tagged and every script touches one slot, so
//! the services run on it unchanged with REDIS_CLUSTER=true. `make test` also runs the checkout,
//! stock and payment contract suites on a cluster (E2E_REDIS_CLUSTER=1).

use std::process::Command;

use serde_json::json;
use tests_e2e::{Stack, StackOptions};

fn keys_on(port: u16) -> usize {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "DBSIZE"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[tokio::test]
async fn checkouts_on_a_three_master_cluster_spread_their_keys_and_balance_the_books() {
    let stack = Stack::launch(StackOptions {
        redis_cluster: true,
        ..StackOptions::default()
    })
    .await;
    for id in 1..=6 {
        stack.put_item(id, "Mug", 1000 + id as i64, 20).await;
    }

    let results = futures_util::future::join_all((0..60).map(|i| {
        stack.checkout_owned(
            uuid::Uuid::new_v4().to_string(),
            json!({"itemId": 1 + i % 6, "quantity": 1}),
        )
    }))
    .await;

    let failed: Vec<_> = results.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let nodes = stack.redis_node_ports();
    assert_eq!(nodes.len(), 3);
    let holding = nodes.iter().filter(|p| keys_on(**p) > 0).count();
    assert_eq!(holding, 3, "every master holds some of the keys");
    let sold: i64 = futures_util::future::join_all((1..=6).map(|id| stack.item(id)))
        .await
        .iter()
        .map(|item| item["sold"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(sold, 60);
    let orders = stack.get_json("/order/totals", true).await;
    let payments = stack.get_json("/payment/totals", true).await;
    assert_eq!(orders["USD"]["completed"]["count"], 60, "{orders}");
    assert_eq!(
        payments["USD"]["charged"]["amount"], orders["USD"]["completed"]["amount"],
        "{orders} {payments}"
    );
}
