from cluster.cli import main


def test_missing_model_path_is_a_clear_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: %s}\ndata: {train_path: a, eval_path: b}\n" % (tmp_path / "nowhere"))
    assert main(["run", str(recipe), f"run.output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "model.path" in err and "does not exist" in err
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_wrong_type_exits_2(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: x}\ndata: {train_path: a, eval_path: b}\ncontroller: {steps: many}\n")
    assert main(["run", str(recipe)]) == 2
    assert "'controller.steps'" in capsys.readouterr().err


def test_algorithms_lists_registries(capsys):
    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    for name in ("grpo", "k3", "arithmetic", "format"):
        assert name in out
    # Environments and tools, each under its heading.
    envs, tools = out.split("environments:\n")[1].split("tools:\n")
    assert [line.split()[0] for line in envs.splitlines()] == ["guess_number", "gym", "tool_use"]
    assert "calculator" in tools.split()
