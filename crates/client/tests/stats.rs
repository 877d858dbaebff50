//! Statistics end to end on SQLite and PostgreSQL: two data providers fill
//! the slots of their directory patients with noisy encrypted values; a
//! researcher gets count, mean, variance and a histogram across both, within
//! the stated noise of the plaintext; and the review's four ways of singling
//! a patient out (H10 a-d) are refused or drowned in stated noise. The store
//! holds no value in the clear.

mod common;

use asclepios_audit::Action;
use asclepios_client::stats::{Aggregate, Summary};
use common::{add_identity, client, contains, deploy_with, refusal, Deployment};

/// Registers `n` directory patients `<prefix>NN`.
async fn patients(d: &Deployment, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i:02}");
        add_identity(d, &id, "patient", &[&format!("patient:{id}")]).await;
        ids.push(id);
    }
    ids
}

/// Publishes `values` (one per patient) as `provider` for `study`/`period`.
async fn publish(
    d: &Deployment,
    provider: &str,
    study: &str,
    period: &str,
    people: &[String],
    values: &[Option<f64>],
) -> Vec<u64> {
    let lab = client(d, provider);
    let slots = lab.stats_slots(study, people).await.unwrap();
    let rows: Vec<_> = slots
        .iter()
        .zip(values)
        .map(|((_, slot, key), v)| (*slot, key, *v))
        .collect();
    lab.stats_publish(study, (period, "systolic"), RANGE, &BUCKETS, &rows)
        .await
        .unwrap();
    slots.iter().map(|(_, s, _)| *s).collect()
}

const RANGE: (f64, f64) = (100.0, 200.0);
const BUCKETS: [f64; 2] = [120.0, 140.0];
const VALUE: &str = "value:100..200";

fn slots_cohort(slots: &[u64]) -> String {
    let list: Vec<String> = slots.iter().map(u64::to_string).collect();
    format!("slots:{}", list.join(","))
}

/// Within ten standard deviations of the noise (discrete Laplace tails:
/// a false alarm about once in a million).
fn within(got: f64, want: f64, sd: f64) -> bool {
    (got - want).abs() <= 10.0 * sd
}

async fn scenario(d: Deployment) {
    add_identity(&d, "lab-north", "device", &["role:lab"]).await;
    let people = patients(&d, "pat-s", 30).await;
    let (central, north) = people.split_at(18);
    let study = "bp-2026";
    let period = "2026-11";
    // Distinctive values, so a scan of the store can look for them.
    let values_a: Vec<Option<f64>> = (0..18)
        .map(|i| (i != 4).then_some(111.7 + 3.1 * i as f64))
        .collect();
    let values_b: Vec<Option<f64>> = (0..12).map(|i| Some(128.3 + 2.9 * i as f64)).collect();

    // Slots are people: a name that is not a directory patient gets none
    // (H10c's dummy slots), and a patient another provider fills is
    // refused.
    let lab_north = client(&d, "lab-north");
    let dummies: Vec<String> = (0..9).map(|i| format!("dummy-{i}")).collect();
    let (status, message) = refusal(lab_north.stats_slots(study, &dummies).await.unwrap_err());
    assert_eq!(status, 422, "{message}");
    assert!(
        message.contains("not patients of the directory"),
        "{message}"
    );
    let central_slots = publish(&d, "lab-central", study, period, central, &values_a).await;
    let (status, _) = refusal(
        lab_north
            .stats_slots(study, &central[..1])
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);
    let north_slots = publish(&d, "lab-north", study, period, &north[..12], &values_b).await;
    // Asking again returns the same slot; a slot publishes once per label.
    let again = client(&d, "lab-central")
        .stats_slots(study, &central[..1])
        .await
        .unwrap();
    assert_eq!(again[0].1, central_slots[0]);
    let (status, _) = refusal(
        client(&d, "lab-central")
            .stats_publish(
                study,
                (period, "systolic"),
                RANGE,
                &BUCKETS,
                &[(again[0].1, &again[0].2, Some(120.0))],
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 409);

    // The whole cohort: noisy, within the stated noise of the plaintext.
    let researcher = client(&d, "researcher-rita");
    let all: Vec<f64> = values_a
        .iter()
        .chain(&values_b)
        .flatten()
        .copied()
        .collect();
    let summary: Summary = researcher
        .stats_summary(study, period, "systolic", "all")
        .await
        .unwrap();
    let n = all.len() as f64;
    let mean = all.iter().sum::<f64>() / n;
    assert_eq!(summary.slots, 30);
    assert!(summary.count_sd > 0.5, "{summary:?}");
    assert!(
        within(summary.count as f64, 29.0, summary.count_sd),
        "{summary:?}"
    );
    let (got, sd) = (summary.mean.unwrap(), summary.mean_sd.unwrap());
    assert!(within(got, mean, sd), "mean {got} vs {mean} (sd {sd})");
    assert_eq!(summary.histogram.len(), 3);
    // Six labels: six new releases, ε 1 each.
    assert_eq!(summary.budget.epsilon, 6.0, "{:?}", summary.budget);

    // Each person covered sees the release and its ε in their access list.
    let mut patient = client(&d, &north[0]);
    patient.refresh_key().await.unwrap();
    let seen = patient.audit_events().await.unwrap();
    assert!(
        seen.iter().any(|e| e.action == Action::KeyIssue
            && e.actor == "researcher-rita"
            && e.resource.contains("ε 1 spent on you")),
        "{seen:?}"
    );

    // H10d: a key is bound to its label: the key for the count does not
    // open the values, though the cohort is the same.
    let present = format!("{period}/systolic/present");
    let value = format!("{period}/systolic/{VALUE}");
    let (slots, key, budget) = researcher.stats_key(study, &present, "all").await.unwrap();
    // Every key spends, a repeated one too: the record service's operator
    // could have the values published again with fresh noise.
    assert_eq!(budget.epsilon, 1.0);
    assert_eq!(budget.study_spent, 7.0, "{budget:?}");
    let err = researcher
        .stats_decrypt(study, &value, &slots, key)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");

    // Refused: a small cohort; "everyone but one" after "everyone".
    let mut everyone: Vec<u64> = central_slots.iter().chain(&north_slots).copied().collect();
    everyone.sort();
    for (cohort, why) in [
        (slots_cohort(&everyone[..5]), "below the minimum"),
        (slots_cohort(&everyone[1..]), "isolated"),
    ] {
        let (status, message) = refusal(
            researcher
                .stats_sum(study, &value, &cohort)
                .await
                .unwrap_err(),
        );
        assert_eq!(status, 403, "{message}");
        assert!(message.contains(why), "{cohort}: {message}");
    }

    // H10a: a narrow period with one value. The cohort is the same people
    // (slots do not shrink with the period), and the sum carries noise:
    // the recovered "value" is not the patient's, and its noise is stated.
    let narrow = "2026-09";
    let mut only_one = vec![None; 18];
    only_one[0] = Some(144.0);
    publish(&d, "lab-central", study, narrow, central, &only_one).await;
    let narrow_value = format!("{narrow}/systolic/{VALUE}");
    let agg: Aggregate = researcher
        .stats_sum(study, &narrow_value, "provider:lab-central")
        .await
        .unwrap();
    let recovered = RANGE.0 + agg.sum as f64 / 10.0;
    assert!(agg.noise_sd >= 100.0, "stated noise {}", agg.noise_sd);
    assert!(recovered != 144.0, "the single value came out exact");

    // The budget: the study's per-person budget (8 here) runs out.
    let mut refused = None;
    for part in ["present", "square:100..200", "bucket:lt120", "bucket:ge140"] {
        let label = format!("{narrow}/systolic/{part}");
        if let Err(e) = researcher
            .stats_sum(study, &label, "provider:lab-central")
            .await
        {
            refused = Some(refusal(e));
            break;
        }
    }
    let (status, message) = refused.expect("the study's budget never ran out");
    assert_eq!(status, 403);
    assert!(message.contains("privacy budget"), "{message}");

    // H10b: the same data in two studies, differenced. Every release joins
    // one family over the population, so "11 people" in one study and
    // "the same but one" in another is refused.
    let others = patients(&d, "pat-b", 11).await;
    let values_c: Vec<Option<f64>> = (0..11).map(|i| Some(150.0 + i as f64)).collect();
    publish(&d, "lab-central", "bp2", period, &others, &values_c).await;
    let in_bp3 = publish(&d, "lab-central", "bp3", period, &others, &values_c).await;
    researcher.stats_sum("bp2", &value, "all").await.unwrap();
    let (status, message) = refusal(
        researcher
            .stats_sum("bp3", &value, &slots_cohort(&in_bp3[1..]))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403);
    assert!(message.contains("isolated"), "{message}");

    // H10c: lab-north fills nine real patients with values it knows; a
    // cohort of them and one of lab-central's is refused, since a provider
    // could subtract the values it published.
    let study5 = "bp5";
    let one = patients(&d, "pat-c", 1).await;
    let nine = patients(&d, "pat-n", 9).await;
    let c5 = publish(&d, "lab-central", study5, period, &one, &[Some(120.0)]).await;
    let mut planted = publish(&d, "lab-north", study5, period, &nine, &[Some(100.0); 9]).await;
    planted.push(c5[0]);
    let (status, message) = refusal(
        researcher
            .stats_sum(study5, &value, &slots_cohort(&planted))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403);
    assert!(
        message.contains("knows the values it published"),
        "{message}"
    );

    // A provider's labels over its own slots alone (another range, other
    // buckets) are not asked for in a summary over others: no budget is
    // spent on them, and the summary still comes out.
    let study_i = "inj";
    let ten = patients(&d, "pat-i", 10).await;
    let lab = client(&d, "lab-north");
    let slots = lab.stats_slots(study_i, &north[..10]).await.unwrap();
    let rows: Vec<_> = slots
        .iter()
        .map(|(_, slot, key)| (*slot, key, Some(101.0)))
        .collect();
    lab.stats_publish(study_i, (period, "systolic"), (0.0, 250.0), &[130.0], &rows)
        .await
        .unwrap();
    let values_i: Vec<Option<f64>> = (0..10).map(|i| Some(120.0 + i as f64)).collect();
    publish(&d, "lab-central", study_i, period, &ten, &values_i).await;
    let own = researcher
        .stats_summary(study_i, period, "systolic", "provider:lab-central")
        .await
        .unwrap();
    assert_eq!(own.histogram.len(), 3, "{own:?}");
    assert_eq!(own.budget.epsilon, 6.0, "{:?}", own.budget);

    // Only researchers get keys; only providers get slots.
    let (status, _) = refusal(
        client(&d, "dr-heart")
            .stats_sum(study, &value, "all")
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403);
    let (status, _) = refusal(
        researcher
            .stats_slots(study, &central[..1])
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403);

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

fn small_budget(cfg: &mut asclepios_deploy::Config) {
    cfg.stats.study_budget = 8;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_on_sqlite() {
    scenario(deploy_with(false, small_budget).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_on_postgres() {
    scenario(deploy_with(true, small_budget).await).await;
}
