"""Acting and training: everything between the model (``r3m_agent``) and the entry points (``train/``).

| module | concern |
|---|---|
| ``policy``, ``rollout`` | acting: the model as a policy over text actions; episodes in vector envs |
| ``data`` | expert demonstrations as token batches, decoding specs, demonstration sources |
| ``losses`` | imitation, PonderNet halting, penalties, the policy-gradient objective |
| ``loop`` | the optimisation loop (resumable phases, clipping, NaN skipping, checkpoints) |
| ``stages`` | the imitation phases several scripts run (Stage 1, dense baseline, Stage 2) |
| ``distill``, ``baselines`` | distillation of tool results; the baselines R3M is compared with |
| ``evaluation`` | evaluation through the envs' verifiers; halting and tool-use summaries |
| ``reporting``, ``plots``, ``signals`` | logs, results tables, figures, the plan's warning signs |
| ``run``, ``cli`` | the run scaffold (folder, resume, seeds, device) and the config-to-CLI parser |
| ``lm`` | Stage 0's corpus and generation statistics |
"""
