"""Tests of the P3-style templates: rendering, instructions, data files."""

import json
import os

import pytest

from tasks import prompt_templates

_CB_EXAMPLE = {
    'premise': 'The cat sat on the mat.',
    'hypothesis': 'A cat is sitting.',
    'label': 0,
    'idx': 3,
}


def test_renders_cb_against_hand_written_strings():
  template = prompt_templates.load('super_glue_cb')['premise_entails']

  rendered = template.render(_CB_EXAMPLE)

  assert rendered.inputs == (
      'Premise: The cat sat on the mat.\n'
      'Hypothesis: A cat is sitting.\n'
      'Does the premise entail the hypothesis?'
  )
  assert rendered.targets == 'Yes'
  assert rendered.answer_choices == ('Yes', 'No', 'Maybe')
  assert template.instruction == (
      'Premise: Hypothesis: Does the premise entail the hypothesis?'
  )
  neutral = template.render({**_CB_EXAMPLE, 'label': 2})
  assert neutral.targets == 'Maybe'


def test_renders_copa_with_example_dependent_choices():
  template = prompt_templates.load('super_glue_copa')['more_likely']
  example = {
      'premise': 'The man broke his toe.',
      'question': 'cause',
      'choice1': 'He dropped a hammer on his foot.',
      'choice2': 'He got a hole in his sock.',
      'label': 0,
      'idx': 0,
  }

  rendered = template.render(example)

  assert rendered.inputs == (
      'Premise: The man broke his toe.\n'
      'Which is the more likely cause?\n'
      '- He dropped a hammer on his foot.\n'
      '- He got a hole in his sock.'
  )
  assert rendered.targets == 'He dropped a hammer on his foot.'
  assert rendered.answer_choices == (example['choice1'], example['choice2'])
  assert template.instruction == 'Premise: Which is the more likely?'
  assert template.fixed_answer_choices is None


def test_renders_winogrande_sentences_as_choices():
  template = prompt_templates.load('winogrande')['more_sensible_sentence']
  example = {
      'sentence': 'The trophy did not fit in the case because the _ '
      'was too big.',
      'option1': 'trophy',
      'option2': 'case',
      'label': 0,
  }

  rendered = template.render(example)

  assert rendered.answer_choices == (
      'The trophy did not fit in the case because the trophy was too big.',
      'The trophy did not fit in the case because the case was too big.',
  )
  assert rendered.targets == rendered.answer_choices[0]
  assert rendered.inputs == (
      'Which of these two sentences is more sensible?\n'
      '1. ' + rendered.answer_choices[0] + '\n2. ' + rendered.answer_choices[1]
  )
  assert template.instruction == (
      'Which of these two sentences is more sensible? 1. 2.'
  )


def test_renders_nested_features_and_renamed_keys():
  wiki_bio = prompt_templates.load('wiki_bio')['biography_from_facts']
  example = {
      'input_text': {
          'context': 'ada lovelace\n',
          'table': {
              'column_header': ['name', 'birth_date'],
              'content': ['Ada', '1815'],
              'row_number': [1, 1],
          },
      },
      'target_text': 'Ada Lovelace was a mathematician.',
  }
  assert wiki_bio.render(example).inputs == (
      'Facts:\nname: Ada\nbirth date: 1815\n'
      'Write a short biography based on these facts.'
  )

  trec = prompt_templates.load('trec')['asking_about']
  rendered = trec.render(
      {'text': 'Who wrote Hamlet?', 'label-coarse': 3, 'label-fine': 0}
  )
  assert rendered.targets == 'person'


def test_multi_news_separator_does_not_split_the_template():
  template = prompt_templates.load('multi_news')['combine_reports']

  rendered = template.render(
      {'document': 'First story. ||||| Second story.', 'summary': 'Both.'}
  )

  assert rendered.inputs == (
      'Several news reports follow:\nFirst story. \n\n'
      ' Second story.\n\n'
      'Write one summary that combines them.'
  )
  assert rendered.targets == 'Both.'
  assert template.instruction == (
      'Several news reports follow: Write one summary that combines them.'
  )


def test_data_containing_the_separator_renders():
  template = prompt_templates.load('super_glue_cb')['premise_entails']
  rendered = template.render({**_CB_EXAMPLE, 'premise': 'a ||| b'})
  assert rendered.inputs.startswith('Premise: a ||| b\n')
  assert rendered.targets == 'Yes'


def test_unlabelled_and_unanswerable_examples_are_dropped():
  template = prompt_templates.load('super_glue_cb')['premise_entails']
  assert template.render({**_CB_EXAMPLE, 'label': -1}) is None
  assert template.render({**_CB_EXAMPLE, 'label': 7}) is None
  wiki_qa = prompt_templates.load('wiki_qa')['write_question']
  assert (
      wiki_qa.render(
          {'question': 'q?', 'answer': 'a', 'label': 0, 'document_title': 't'}
      )
      is None
  )


def test_missing_field_is_an_error():
  template = prompt_templates.load('super_glue_cb')['premise_entails']
  with pytest.raises(Exception, match='hypothesis'):
    template.render({'premise': 'p', 'label': 0})


def test_explicit_instruction_overrides_the_derived_one():
  template = prompt_templates.load('super_glue_copa')['complete_sentence']
  assert template.instruction == (
      'Complete the sentence with the more plausible continuation.'
  )
  derived = prompt_templates.Template('t', 'Say {{ x }}! ||| {{ y }}')
  assert derived.instruction == 'Say!'


@pytest.mark.parametrize(
    'text,expected',
    [
        ('Is "" a paraphrase of ""?', 'Is a paraphrase of?'),
        ('Options: -', 'Options:'),
        ('Words: . Answer with it.', 'Words. Answer with it.'),
        ('... How does it   continue?\n', 'How does it continue?'),
        ('Question: ?', 'Question?'),
    ],
)
def test_clean_instruction(text, expected):
  assert prompt_templates.clean_instruction(text) == expected


def test_split_source_ignores_separators_inside_jinja():
  source = "A {{ x | replace('|||', '') }} B ||| {{ y }}"
  assert prompt_templates.split_source(source) == (
      "A {{ x | replace('|||', '') }} B ",
      ' {{ y }}',
  )


def test_every_template_file_is_valid():
  collections = prompt_templates.available()
  assert len(collections) >= 60
  total = 0
  for name in collections:
    with open(prompt_templates.template_path(name)) as f:
      data = json.load(f)
    collection = prompt_templates.load(name)
    assert collection.dataset == data['dataset']
    assert len(collection.templates) >= 3, name
    for template in collection.templates:
      total += 1
      assert template.instruction, (name, template.name)
      assert prompt_templates.SEPARATOR in template.jinja, template.name
    instructions = [t.instruction for t in collection.templates]
    assert len(set(instructions)) == len(instructions), name
  assert total >= 200
  assert os.path.isdir(prompt_templates.TEMPLATES_DIR)


def test_heldout_templates_are_listed_templates():
  collection = prompt_templates.load('synthetic_first')
  assert collection.heldout == ('comes_first',)
  assert collection.seen == [
      'first_word_in_list',
      'give_first',
      'copy_first',
      'answer_first_only',
  ]
  assert prompt_templates.load('super_glue_cb').heldout == ()


def test_promptsource_helpers_render_real_examples():
  template = prompt_templates.Template(
      'helpers',
      '{% for k, v in zip(keys, values) %}{{ k }}: {{ v | highlight }}\n'
      '{% endfor %}Pick one of {{ options | choice }}. ||| '
      '{{ votes | most_frequent | join(" and ") }}',
  )

  rendered = template.render(
      {
          'keys': ['a', 'b'],
          'values': ['1', '2'],
          'options': ['only'],
          'votes': ['x', 'y', 'y', 'x', 'z'],
      }
  )

  assert rendered.inputs == (
      "a: <span style='color: #F08080'>1</span>\n"
      "b: <span style='color: #F08080'>2</span>\n"
      'Pick one of only.'
  )
  assert rendered.targets == 'x and y'  # Ties, in order of first occurrence.
  picks = {
      prompt_templates.Template('c', '{{ o | choice }} ||| t')
      .render({'o': ['p', 'q']})
      .inputs
      for _ in range(64)
  }
  assert picks == {'p', 'q'}  # Random, as promptsource picks.
  assert (
      prompt_templates.Template('c', 'Pick {{ o | choice }} ||| t').instruction
      == 'Pick'
  )


@pytest.mark.parametrize(
    'jinja,answer_choices,instruction',
    [
        # The whole template renders, then splits: `|||` inside an if block.
        (
            '{% if label == 1 %}Rewrite {{ text }} politely.\n|||\n{{ polite }}'
            '{% endif %}',
            None,
            'Rewrite politely.',
        ),
        # A condition on a field holds; an if/elif chain takes its first branch.
        (
            '{% if n > 2 %}Is it many?{% elif n == 1 %}Is it one?{% endif %} {{ n }}'
            ' ||| {{ a }}',
            None,
            'Is it many?',
        ),
        (
            '{% if answers | length > 0 and context is defined %}Context: '
            '{{ context }}{% endif %} Answer it. ||| {{ answers[0] }}',
            None,
            'Context: Answer it.',
        ),
        # Arithmetic, filters, ranges and items of blanks are blank.
        (
            'Words {{ words[start | int : end | int + 1] | join(" ") }} at '
            '{{ start + 1 }}{% for i in range(count) %}#{{ i }}{% endfor %}. '
            '|||{{ x }}',
            None,
            'Words at.',
        ),
        # Fixed answer choices are a plain list; `choice` takes the first.
        (
            'Say {{ answer_choices[:-1] | join(", ") }} or {{ answer_choices[-1] }}'
            ' ({{ ["in short", "briefly"] | choice }}): {{ q }} ||| '
            '{{ answer_choices[label] }}',
            'red ||| green ||| blue',
            'Say red, green or blue (in short):',
        ),
        (
            'Most common: {{ [3, 1, 3] | most_frequent | first }}. {{ x }} ||| '
            '{{ x | most_frequent }}',
            None,
            'Most common: 3.',
        ),
        # Nothing but fields.
        ('{{ question }} ||| {{ answer }}', None, ''),
    ],
)
def test_instruction_renders_the_whole_template_with_blank_fields(
    jinja, answer_choices, instruction
):
  template = prompt_templates.Template('t', jinja, answer_choices)
  assert template.instruction == instruction


def test_an_instruction_that_cannot_be_derived_names_the_template():
  template = prompt_templates.Template(
      'looks_up',
      'Say {{ answer_choices.index("maybe") }}. ||| {{ y }}',
      'yes ||| no',
  )
  with pytest.raises(
      ValueError,
      match=r"template 'looks_up'.*'maybe' is not "
      'in list.*explicit "instruction"',
  ):
    template.instruction  # pylint: disable=pointless-statement
