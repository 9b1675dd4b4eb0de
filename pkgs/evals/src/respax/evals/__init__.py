"""respax.evals: one LM protocol with in-process JAX and OpenAI-compatible HTTP backends, and
model-written evaluations (Perez et al. 2022), and the next-token games of Shlegeris et al. (2022)
with their analyses."""

from importlib.metadata import version as _version

from ._bpe import GPT2Vocab as GPT2Vocab, gpt2_tokenizer as gpt2_tokenizer, show_token as show_token
from ._corpus import (
    CORPUS_HELD_OUT_PERSONAS as CORPUS_HELD_OUT_PERSONAS,
    load_corpus as load_corpus,
)
from ._datasets import (
    DATA_ENV as DATA_ENV,
    JsonlError as JsonlError,
    Sample as Sample,
    Task as Task,
    list_tasks as list_tasks,
    load_task as load_task,
    read_jsonl as read_jsonl,
    task_from_jsonl as task_from_jsonl,
)
from ._game import (
    PAIR_BUTTONS as PAIR_BUTTONS,
    CandidateScorer as CandidateScorer,
    PairFeedback as PairFeedback,
    PairGame as PairGame,
    PairPrompt as PairPrompt,
    PairQuestion as PairQuestion,
    TopOneFeedback as TopOneFeedback,
    TopOneGame as TopOneGame,
    TopOnePrompt as TopOnePrompt,
    pair_score as pair_score,
    player_sample_index as player_sample_index,
    score_candidates as score_candidates,
)
from ._gamelog import append_record as append_record, read_log as read_log
from ._gpt2 import (
    GPT2 as GPT2,
    GPT2Config as GPT2Config,
    TokenScores as TokenScores,
    gpt2_generate as gpt2_generate,
    gpt2_logits as gpt2_logits,
    gpt2_score as gpt2_score,
    gpt2_state_dict as gpt2_state_dict,
    load_gpt2 as load_gpt2,
)
from ._http import NoLogprobsError as NoLogprobsError, OpenAILM as OpenAILM
from ._humans import (
    PairTable as PairTable,
    TopOneTable as TopOneTable,
    accuracy_per_player as accuracy_per_player,
    estimator_bias_curve as estimator_bias_curve,
    exact_ratio as exact_ratio,
    half_player_bootstrap as half_player_bootstrap,
    load_pair_log as load_pair_log,
    load_top1_log as load_top1_log,
    loss_gap as loss_gap,
    loss_gap_per_prompt as loss_gap_per_prompt,
    make_pair_questions as make_pair_questions,
    round_to_buttons as round_to_buttons,
    sample_tokens as sample_tokens,
    target_filter as target_filter,
)
from ._inspect import write_inspect_log as write_inspect_log
from ._jax_lm import JaxLM as JaxLM, train_transformer as train_transformer
from ._ngram import NGramLM as NGramLM
from ._pipeline import (
    PERSONA_PRESET as PERSONA_PRESET,
    FewShotPreset as FewShotPreset,
    PersonaPreset as PersonaPreset,
    Scored as Scored,
    discriminate as discriminate,
    few_shot_behaviours as few_shot_behaviours,
    few_shot_examples as few_shot_examples,
    few_shot_label_prompt as few_shot_label_prompt,
    few_shot_prompt as few_shot_prompt,
    few_shot_relevance_prompt as few_shot_relevance_prompt,
    flip_choices as flip_choices,
    generate_statements as generate_statements,
    generation_prompt as generation_prompt,
    parse_block_quote as parse_block_quote,
    parse_statement as parse_statement,
    persona_rows as persona_rows,
    run_few_shot_pipeline as run_few_shot_pipeline,
    run_persona_pipeline as run_persona_pipeline,
    select as select,
)
from ._protocol import (
    Capabilities as Capabilities,
    CapabilityError as CapabilityError,
    GenerateRequest as GenerateRequest,
    LanguageModel as LanguageModel,
    Loglikelihood as Loglikelihood,
    require as require,
)
from ._released import (
    PAPER_PAIR_SETS as PAPER_PAIR_SETS,
    PAPER_TEST_USERS as PAPER_TEST_USERS,
    ReleasedPairData as ReleasedPairData,
    load_released_pair as load_released_pair,
    load_released_top1 as load_released_top1,
)
from ._runner import (
    TEMPLATES as TEMPLATES,
    EvalResult as EvalResult,
    PromptTemplate as PromptTemplate,
    WinogeneratedResult as WinogeneratedResult,
    chat_template as chat_template,
    evaluate as evaluate,
    evaluate_winogenerated as evaluate_winogenerated,
    fisher_z_ci as fisher_z_ci,
    write_results as write_results,
)
from ._server import make_app as make_app, serve as serve
from ._textgenrnn import (
    TextGenRNN as TextGenRNN,
    TextGenRNNTokenizer as TextGenRNNTokenizer,
    load_textgenrnn as load_textgenrnn,
    textgenrnn_cudnn_to_keras as textgenrnn_cudnn_to_keras,
)
from ._token_lm import TokenLM as TokenLM, rolling_windows as rolling_windows
from ._tokenizer import (
    CharTokenizer as CharTokenizer,
    HFTokenizer as HFTokenizer,
    Tokenizer as Tokenizer,
)

__version__ = _version("respax-evals")
