/*===- generate.c - Greedy generation through the Kiln C API ------------===*
 *
 *   kiln-generate ENGINE CHECKPOINT N TOKEN...
 *
 * Loads a compiled engine with a checkpoint's weights, runs the prompt, and
 * prints the next N tokens (greedy; a kiln_sampler in kiln_output.sampler
 * draws instead). Built in CI from the build tree, from an installed
 * prefix with find_package(Kiln), and with pkg-config.
 *
 *===----------------------------------------------------------------------===*/

#include <kiln/kiln.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Prints a failed call's code and message, frees it, and says whether the
 * call failed. */
static int failed(kiln_status *status) {
  if (!status)
    return 0;
  fprintf(stderr, "kiln-generate: %s: %s\n",
          kiln_status_code_name(kiln_status_get_code(status)),
          kiln_status_message(status));
  kiln_status_free(status);
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: kiln-generate ENGINE CHECKPOINT N TOKEN...\n");
    return 2;
  }
  if (strcmp(kiln_version(), KILN_VERSION_STRING) != 0) {
    fprintf(stderr, "kiln-generate: built against Kiln %s, running %s\n",
            KILN_VERSION_STRING, kiln_version());
    return 1;
  }
  int count = atoi(argv[3]);
  size_t prompt = (size_t)(argc - 4);
  int64_t *tokens = malloc(prompt * sizeof *tokens);
  if (!tokens)
    return 1;
  for (size_t i = 0; i < prompt; ++i)
    tokens[i] = atoll(argv[4 + i]);

  kiln_model_params params;
  kiln_model_params_init(&params);
  params.engine_path = argv[1];
  params.checkpoint_dir = argv[2];
  kiln_model *model = NULL;
  kiln_session *session = NULL;
  int status = 1;
  if (failed(kiln_model_load(&params, &model)) ||
      failed(kiln_session_create(model, NULL, &session)))
    goto done;
  printf("kiln %s, target %s, vocabulary %lld\n", kiln_version(),
         kiln_model_target(model), (long long)kiln_model_vocab_size(model));

  kiln_output output;
  kiln_output_init(&output); /* KILN_OUTPUT_TOKEN, greedy */
  /* NULL positions: the prompt starts at 0, each step continues it. */
  if (failed(kiln_session_run(session, tokens, NULL, prompt, &output)))
    goto done;
  printf("generated:");
  for (int i = 0; i < count; ++i) {
    int64_t next = output.token;
    printf(" %lld", (long long)next);
    if (i + 1 < count &&
        failed(kiln_session_run(session, &next, NULL, 1, &output)))
      goto done;
  }
  printf("\n");
  status = 0;
done:
  kiln_session_free(session);
  kiln_model_free(model);
  free(tokens);
  return status;
}
