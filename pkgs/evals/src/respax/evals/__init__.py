"""respax.evals: one LM protocol with in-process JAX and OpenAI-compatible HTTP backends, and
model-written evaluations (Perez et al. 2022)."""

from importlib.metadata import version as _version

from ._corpus import (
    CORPUS_HELD_OUT_PERSONAS as CORPUS_HELD_OUT_PERSONAS,
    load_corpus as load_corpus,
)
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
from ._jax_lm import JaxLM as JaxLM, train_transformer as train_transformer
from ._ngram import NGramLM as NGramLM
from ._protocol import (
    Capabilities as Capabilities,
    CapabilityError as CapabilityError,
    GenerateRequest as GenerateRequest,
    LanguageModel as LanguageModel,
    Loglikelihood as Loglikelihood,
    require as require,
)
from ._server import make_app as make_app, serve as serve
from ._token_lm import TokenLM as TokenLM, rolling_windows as rolling_windows
from ._tokenizer import (
    CharTokenizer as CharTokenizer,
    HFTokenizer as HFTokenizer,
    Tokenizer as Tokenizer,
)

__version__ = _version("respax-evals")
