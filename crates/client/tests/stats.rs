//! Statistics end to end on SQLite and PostgreSQL: two data providers
//! encrypt their patients' values independently; a researcher gets count,
//! sum, mean, variance and a histogram across both, matching the plaintext;
//! the authority refuses small and differencing cohorts; the store holds no
//! value in the clear.

mod common;

use asclepios_client::ClientError;
use asclepios_crypto::ipfe::SlotKey;
use common::{add_identity, client, contains, deploy, Deployment};

async fn scenario(d: Deployment) {
    // A second provider, with its own certificate.
    add_identity(&d, "lab-north", "device", &["role:lab"]).await;
    let study = "bp-2026";
    let period = "2026-11";
    let buckets = [120.0, 140.0];
    // Distinctive values, so a scan of the store can look for them.
    let values_a: Vec<Option<f64>> = (0..18)
        .map(|i| (i != 4).then_some(111.7 + 3.1 * i as f64))
        .collect();
    let values_b: Vec<Option<f64>> = (0..12).map(|i| Some(128.3 + 2.9 * i as f64)).collect();

    let mut first_slots = Vec::new();
    for (provider, values) in [("lab-central", &values_a), ("lab-north", &values_b)] {
        let lab = client(&d, provider);
        let (first, keys) = lab.stats_slots(study, values.len() as u32).await.unwrap();
        first_slots.push(first);
        let rows: Vec<(u64, &SlotKey, Option<f64>)> = keys
            .iter()
            .zip(values.iter())
            .enumerate()
            .map(|(i, (k, v))| (first + i as u64, k, *v))
            .collect();
        let n = lab
            .stats_publish(study, period, "systolic", &buckets, &rows)
            .await
            .unwrap();
        assert_eq!(
            n,
            values.len() * 6,
            "present, value, square and three buckets"
        );
        // A slot publishes once per label; another provider's slot is not yours.
        let again = lab
            .stats_publish(study, period, "systolic", &buckets, &rows[..1])
            .await
            .unwrap_err();
        assert!(
            matches!(again, ClientError::Refused { status: 409, .. }),
            "{again}"
        );
    }
    assert_eq!(first_slots, [0, 18]);

    let researcher = client(&d, "researcher-rita");
    let all: Vec<f64> = values_a
        .iter()
        .chain(&values_b)
        .flatten()
        .copied()
        .collect();
    let summary = researcher
        .stats_summary(study, period, "systolic", "all")
        .await
        .unwrap();
    let n = all.len() as f64;
    let mean = all.iter().sum::<f64>() / n;
    let variance = all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    assert_eq!(summary.slots, 30);
    assert_eq!(summary.count, 29);
    assert!((summary.mean.unwrap() - mean).abs() < 1e-9, "{summary:?}");
    assert!(
        (summary.variance.unwrap() - variance).abs() < 1e-6,
        "{summary:?}"
    );
    let below = all.iter().filter(|v| **v < 120.0).count() as i64;
    let above = all.iter().filter(|v| **v >= 140.0).count() as i64;
    let histogram: std::collections::BTreeMap<_, _> = summary.histogram.into_iter().collect();
    assert_eq!(histogram["lt120"], below);
    assert_eq!(histogram["ge140"], above);
    assert_eq!(histogram["120-140"], 29 - below - above);

    // A key is bound to the label it was asked for (review finding H10d):
    // a key for the count opens the count, and not the values, though the
    // cohort is the same.
    let present = format!("{period}/systolic/present");
    let value = format!("{period}/systolic/value");
    let (slots, key) = researcher.stats_key(study, &present, "all").await.unwrap();
    assert_eq!(
        researcher
            .stats_decrypt(study, &present, &slots, key.clone())
            .await
            .unwrap(),
        29
    );
    let err = researcher
        .stats_decrypt(study, &value, &slots, key)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");

    // Per provider: disjoint from each other, each at least 10.
    let north = researcher
        .stats_summary(study, period, "systolic", "provider:lab-north")
        .await
        .unwrap();
    assert_eq!(north.count, 12);

    // Refused: a small cohort, and "everyone but one" after "everyone".
    for (cohort, why) in [
        ("slots:0,1,2,3,4", "below the minimum"),
        (
            "slots:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28",
            "isolated",
        ),
    ] {
        let err = researcher
            .stats_sum(study, &format!("{period}/systolic/value"), cohort)
            .await
            .unwrap_err();
        match err {
            ClientError::Refused {
                status: 403,
                message,
                ..
            } => assert!(message.contains(why), "{message}"),
            other => panic!("{cohort}: {other}"),
        }
    }
    // Only researchers get keys; only providers get slots.
    let err = client(&d, "dr-heart")
        .stats_sum(study, &format!("{period}/systolic/value"), "all")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );
    let err = researcher.stats_slots(study, 5).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status: 403, .. }),
        "{err}"
    );

    // No value appears in the store. (The scaled integers are not looked
    // for: four digits turn up by chance in timestamps and random bytes.)
    let raw = d.raw_bytes().await;
    for v in &all {
        let needle = format!("{v:.1}");
        assert!(
            !contains(&raw, needle.as_bytes()),
            "`{needle}` in the store"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_on_sqlite() {
    scenario(deploy(false).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_on_postgres() {
    scenario(deploy(true).await).await;
}
