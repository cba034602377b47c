from ecgshard import experiments


def test_experiment_a_writes_and_replaces_its_section(demo_data, tmp_path):
    results = tmp_path / "results.md"
    results.write_text("# Results\n\nintro kept\n")
    cfg = experiments.ExperimentConfig(
        work=str(tmp_path / "work"), ptbxl=str(demo_data / "ptbxl"), text_model="minilm-offline",
        splits=2, holdout_size=2, min_test_positives=3, epochs=1, batch_size=32,
        min_positives=2, device="cpu", bootstrap=10, results=str(results), label="tiny test",
        fit_extra={"max_steps": 3})
    out = experiments.run_a(cfg)
    assert len(out["splits"]) == 2
    assert out["splits"][0] == ["LAFB", "LVOLT", "PVC", "SBRAD"]   # the default, where present
    text = results.read_text()
    assert "intro kept" in text and text.count("experiment-a-tiny-test:begin") == 1
    assert "held-out classes, macro AUROC" in text and "| 1 |" in text
    experiments.run_a(cfg)                                # a rerun resumes and replaces
    assert results.read_text().count("experiment-a-tiny-test:begin") == 1
